#!/usr/bin/env bash
# lab-server's hand-rolled HTTP/1.1 path (bench::serve) beside the same answer served by hyper
# (examples/hyper_backend.rs), on loopback, loaded by sluice-load: keep-alive and one connection
# per request, two alternating rounds of 5 s each (32 in flight). Both servers run 2 tokio
# worker threads. Stops by itself; ends only the two servers it started, by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p bench --bin sluice-load --bin lab-server --example hyper_backend
R=target/release
OUT=$(mktemp -d)
$R/lab-server --name a --http 0 --bind 127.0.0.1 > "$OUT/lab-server" 2>/dev/null &
LS=$!
TOKIO_WORKER_THREADS=2 $R/examples/hyper_backend a > "$OUT/hyper" 2>/dev/null &
HY=$!
trap 'kill $LS $HY 2>/dev/null || true; rm -rf "$OUT"' EXIT
for _ in $(seq 100); do
  grep -q ready "$OUT/lab-server" && grep -q listening "$OUT/hyper" && break
  sleep 0.1
done
LSA=$(sed -n 's/.*"http":\["\([^"]*\)".*/\1/p' "$OUT/lab-server")
HYA=$(sed -n 's/^listening //p' "$OUT/hyper")
for mode in keep-alive new-connection; do
  for round in 1 2; do
    for server in "lab-server $LSA" "hyper $HYA"; do
      set -- $server
      printf '%-14s %-10s round %s: ' "$mode" "$1" "$round"
      $R/sluice-load "$2" --mode "$mode" -c 32 -n 10000000 -d 5s 2>/dev/null | head -1
    done
  done
done
