//! The CLI's client subcommands: they ask a running agent's API and print kubectl-like
//! tables (or the JSON with `-o json`).

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::http_client;

/// Why a client command failed: the agent gave no answer, an unexpected one, or an error;
/// or the drain it waited for did not happen.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer (`what` names the agent and, when it is the local one, the hint).
    #[error("{what}: {cause}")]
    Unreachable {
        what: String,
        cause: http_client::Failure,
    },
    #[error("the agent answered {status} with: {body}")]
    NotJson { status: u16, body: String },
    #[error("{path}: HTTP {status}: {message}")]
    Api {
        path: String,
        status: u16,
        message: String,
    },
    #[error("{what}: {cause}")]
    Unexpected {
        what: &'static str,
        cause: serde_json::Error,
    },
    /// The drain did not happen in time (or cannot be asked for); the text says what to do.
    #[error("{0}")]
    NotDrained(String),
}

/// GET `path` from the agent; the JSON body.
pub fn get_json(api: SocketAddr, path: &str) -> Result<Value, Error> {
    get_json_within(api, path, Duration::from_secs(10))
}

/// [`get_json`] with its timeout for connecting and for each read and write.
fn get_json_within(api: SocketAddr, path: &str, timeout: Duration) -> Result<Value, Error> {
    let answer = http_client::get(api, path, timeout).map_err(|cause| {
        let what = if cause.connected() {
            format!("asking the sluice agent at {api} for {path}")
        } else {
            format!("connecting to the sluice agent at {api} (is `sluice run` running? --api ADDR)")
        };
        Error::Unreachable { what, cause }
    })?;
    let body = answer.text();
    let v: Value = serde_json::from_str(&body).map_err(|_| Error::NotJson {
        status: answer.status,
        body: body.clone(),
    })?;
    if answer.status >= 400 {
        return Err(Error::Api {
            path: path.to_string(),
            status: answer.status,
            message: v
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or(&body)
                .to_string(),
        });
    }
    Ok(v)
}

/// Pretty JSON of `v` (a value read from JSON: it always encodes).
fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Renders rows as columns three spaces apart under a header, as kubectl prints them (its
/// printer is Go's text/tabwriter; this is the same elastic-tabstop algorithm).
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    use std::io::Write as _;
    let mut w = tabwriter::TabWriter::new(Vec::new()).padding(3).minwidth(0);
    for cells in std::iter::once(header.iter().map(|h| h.to_string()).collect::<Vec<_>>())
        .chain(rows.iter().cloned())
    {
        // Tabs and line breaks inside a cell would start new columns or rows.
        let cells: Vec<String> = cells.iter().map(|c| c.replace(['\t', '\n'], " ")).collect();
        let _ = writeln!(w, "{}", cells.join("\t"));
    }
    let text = String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default();
    text.lines()
        .map(|l| l.trim_end().to_string() + "\n")
        .collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn items(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o
            .get("items")
            .or_else(|| o.get("services"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

pub fn services(api: SocketAddr, json: bool) -> Result<String, Error> {
    let v = get_json(api, "/sluice/v1/dataplane/services")?;
    if json {
        return Ok(pretty(&v));
    }
    let rows: Vec<Vec<String>> = items(&v)
        .iter()
        .map(|svc| {
            let fronts: Vec<String> = svc["frontends"]
                .as_array()
                .map(|a| a.iter().map(frontend).collect())
                .unwrap_or_default();
            let backends = svc["backends"].as_array().map(|a| a.len()).unwrap_or(0);
            let ready = svc["backends"]
                .as_array()
                .map(|a| a.iter().filter(|b| b["state"] == "Ready").count())
                .unwrap_or(0);
            let held = svc.get("id").is_some();
            let status = match (svc["programmed"].as_bool(), held) {
                (Some(false), true) => format!("previous state in force: {}", s(&svc["error"])),
                (Some(false), false) => format!("not programmed: {}", s(&svc["error"])),
                _ => "programmed".into(),
            };
            let or_dash = |v: &Value| if held { s(v) } else { "-".into() };
            vec![
                s(&svc["name"]),
                or_dash(&svc["protocol"]),
                if held { fronts.join(",") } else { "-".into() },
                if held {
                    format!("{ready}/{backends}")
                } else {
                    "-".into()
                },
                or_dash(&svc["table_size"]),
                status,
            ]
        })
        .collect();
    Ok(table(
        &["NAME", "PROTOCOL", "FRONTENDS", "READY", "SLOTS", "STATUS"],
        &rows,
    ))
}

fn frontend(f: &Value) -> String {
    if let Some(p) = f.get("NodePort") {
        format!("<node>:{}", s(p))
    } else if let Some(a) = f.get("Address") {
        s(a)
    } else {
        s(f)
    }
}

pub fn backends(api: SocketAddr, service: Option<&str>, json: bool) -> Result<String, Error> {
    let names: Vec<String> = match service {
        Some(n) => vec![n.to_string()],
        None => items(&get_json(api, "/sluice/v1/dataplane/services")?)
            .iter()
            // A service that never fitted has no backends in the data path.
            .filter(|v| v.get("id").is_some())
            .map(|v| s(&v["name"]))
            .collect(),
    };
    let mut all = Vec::new();
    let mut rows = Vec::new();
    for name in names {
        let v = get_json(
            api,
            &format!("/sluice/v1/dataplane/services/{}/backends", encode(&name)),
        )?;
        for b in items(&v).iter().chain(
            v.get("backends")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        ) {
            rows.push(vec![
                name.clone(),
                s(&b["addr"]),
                s(&b["state"]),
                s(&b["packets"]),
                s(&b["bytes"]),
                s(&b["new_flows"]),
            ]);
        }
        all.push(v);
    }
    if json {
        return Ok(pretty(&all));
    }
    Ok(table(
        &[
            "SERVICE",
            "BACKEND",
            "STATE",
            "PACKETS",
            "BYTES",
            "NEW FLOWS",
        ],
        &rows,
    ))
}

pub fn rollouts(api: SocketAddr, json: bool) -> Result<String, Error> {
    let v = get_json(api, "/sluice/v1/rollouts")?;
    if json {
        return Ok(pretty(&v));
    }
    Ok(render_rollouts(&v))
}

/// `sluice rollouts`' table from the `/sluice/v1/rollouts` JSON: one line per Deployment,
/// then one indented line per ReplicaSet with its backends (ready/all), new flows and share.
pub fn render_rollouts(v: &Value) -> String {
    let backends = |b: &Value| -> (u64, u64) {
        let n = |k: &str| b[k].as_u64().unwrap_or(0);
        let ready = n("ready");
        (ready, ready + n("serving_terminating") + n("not_serving"))
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    for r in items(v) {
        let w = r.get("workload").unwrap_or(&r);
        let key = &w["key"];
        let replicasets = r["replicasets"].as_array().cloned().unwrap_or_default();
        let (ready, all) = replicasets
            .iter()
            .map(|rs| backends(&rs["backends"]))
            .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
        rows.push(vec![
            format!("{}/{}", s(&key["namespace"]), s(&key["name"])),
            format!("{}/{}", s(&w["ready"]), s(&w["desired"])),
            s(&w["updated"]),
            s(&w["available"]),
            s(&w["revision"]),
            format!("{ready}/{all}"),
            s(r.get("new_flows").unwrap_or(&Value::Null)),
            String::new(),
            s(r.get("status").unwrap_or(&Value::Null)),
        ]);
        for rs in &replicasets {
            let (ready, all) = backends(&rs["backends"]);
            rows.push(vec![
                format!("  {}", s(&rs["name"])),
                format!("{}/{}", s(&rs["ready"]), s(&rs["desired"])),
                String::new(),
                s(&rs["available"]),
                s(&rs["revision"]),
                format!("{ready}/{all}"),
                s(&rs["new_flows"]),
                rs["new_flow_share"]
                    .as_f64()
                    .map(|f| format!("{:.1}%", f * 100.0))
                    .unwrap_or_else(|| "-".into()),
                String::new(),
            ]);
        }
    }
    table(
        &[
            "DEPLOYMENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "REVISION",
            "BACKENDS",
            "NEW FLOWS",
            "SHARE",
            "STATUS",
        ],
        &rows,
    )
}

fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What one agent answered about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndpointVerdict {
    /// Services whose backends name the address.
    services: usize,
    /// Of them, those that still select it for new flows.
    selecting: usize,
    /// Tracked flows naming it (0 when not counted).
    flows: u64,
    /// Entries whose flow count is unknown (`null`: not counted, or the conntrack GC has
    /// not completed its first pass): with `--flows`, never a false "drained".
    flows_unknown: usize,
}

impl EndpointVerdict {
    /// Reads `/sluice/v1/dataplane/endpoints/{ip}`; an entry without `selectable` counts as
    /// selecting (never a false "drained").
    fn of(v: &Value) -> Self {
        let entries = items(v);
        EndpointVerdict {
            services: entries.len(),
            selecting: entries
                .iter()
                .filter(|e| e["selectable"].as_bool().unwrap_or(true))
                .count(),
            flows: entries
                .iter()
                .map(|e| e["flows"].as_u64().unwrap_or(0))
                .sum(),
            flows_unknown: entries.iter().filter(|e| e["flows"].is_null()).count(),
        }
    }

    fn drained(self, flows: bool) -> bool {
        self.selecting == 0 && (!flows || (self.flows == 0 && self.flows_unknown == 0))
    }
}

fn endpoint_path(addr: IpAddr, flows: bool) -> String {
    // Flows are asked for only when they are waited for (the conntrack GC's last count).
    format!("/sluice/v1/dataplane/endpoints/{addr}?flows={flows}")
}

/// The drain handshake as a command: returns once the agent no longer selects `addr` for new
/// flows (and, with `flows`, once it tracks none); fails at the timeout.
pub fn drain_wait(
    api: SocketAddr,
    addr: IpAddr,
    timeout: Duration,
    flows: bool,
) -> Result<String, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = EndpointVerdict::of(&get_json(api, &endpoint_path(addr, flows))?);
        if v.drained(flows) {
            return Ok(format!(
                "{addr}: not selected for new flows by {} service(s); {} tracked flows\n",
                v.services, v.flows
            ));
        }
        if Instant::now() >= deadline {
            return Err(Error::NotDrained(format!(
                "{addr}: still selected by {} service(s), {} tracked flows after {timeout:?}",
                v.selecting, v.flows
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Pause between two rounds of `drain-wait --all-nodes`.
const ROUND_PAUSE: Duration = Duration::from_millis(200);
/// Longest wait for one agent's answer, so a silent node cannot hold up a round.
const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Agents asked at once.
const PEER_WORKERS: usize = 16;

/// What one agent said in a round: its verdict, or why there was none.
type PeerAnswer = Result<EndpointVerdict, String>;

/// The cluster-wide drain handshake: asks the local agent (`api`) for its peers
/// (`/sluice/v1/peers`, the agents of the DaemonSet) and returns once none of them selects
/// `addr` for new flows (with `flows`: and none tracks a flow naming it). Each round asks
/// every agent again and re-reads the peer list, so an agent added meanwhile is asked too; an
/// agent that does not answer counts as still selecting. Fails at the timeout, naming every
/// agent not confirmed, or at once when the peer list is empty.
pub fn drain_wait_all(
    api: SocketAddr,
    addr: IpAddr,
    timeout: Duration,
    flows: bool,
) -> Result<String, Error> {
    let deadline = Instant::now() + timeout;
    let read_peers = || -> Result<crate::peers::PeersView, Error> {
        let v = get_json(api, "/sluice/v1/peers")?;
        serde_json::from_value(v).map_err(|cause| Error::Unexpected {
            what: "the agent's /sluice/v1/peers answer",
            cause,
        })
    };
    // A local agent that cannot answer at the start is a misconfiguration (--api): said now.
    let mut view = read_peers()?;
    let path = endpoint_path(addr, flows);
    loop {
        let service = view.service.as_deref().unwrap_or("<none>");
        if view.peers.is_empty() {
            return Err(Error::NotDrained(format!(
                "{addr}: the agent at {api} knows no peer agents (service {service}): {}. \
                 Without --all-nodes only the agent at --api is asked",
                view.note
                    .as_deref()
                    .unwrap_or("deploy/agents-service.yaml creates the Service")
            )));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        let per_request = remaining.clamp(Duration::from_millis(100), PEER_REQUEST_TIMEOUT);
        let answers = ask_peers(&view.peers, &path, per_request);
        if answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|v| v.drained(flows)))
        {
            let rows: Vec<Vec<String>> = view
                .peers
                .iter()
                .zip(&answers)
                .map(|(p, a)| {
                    let v = a.as_ref().expect("all answered");
                    vec![
                        p.node.clone().unwrap_or_else(|| "-".into()),
                        p.address.to_string(),
                        v.services.to_string(),
                        if flows {
                            v.flows.to_string()
                        } else {
                            "-".into()
                        },
                    ]
                })
                .collect();
            return Ok(format!(
                "{addr}: not selected for new flows by any of the {} agents of {service}\n{}",
                view.peers.len(),
                table(&["NODE", "AGENT", "SERVICES", "FLOWS"], &rows)
            ));
        }
        if Instant::now() >= deadline {
            let pending: Vec<String> = view
                .peers
                .iter()
                .zip(&answers)
                .filter_map(|(p, a)| {
                    let what = match a {
                        Ok(v) if v.drained(flows) => return None,
                        Ok(v) if v.selecting > 0 => {
                            format!("still selects it in {} service(s)", v.selecting)
                        }
                        Ok(v) => format!("still tracks {} flows naming it", v.flows),
                        Err(e) => format!("did not answer: {e}"),
                    };
                    let node = p.node.as_deref().unwrap_or("-");
                    Some(format!("  {node} {}: {what}", p.address))
                })
                .collect();
            return Err(Error::NotDrained(format!(
                "{addr}: not drained after {timeout:?}; of the {} agents of {service}, these are \
                 not confirmed:\n{}\nRaise --timeout to wait longer (in a preStop hook, keep \
                 it below the pod's terminationGracePeriodSeconds)",
                view.peers.len(),
                pending.join("\n")
            )));
        }
        std::thread::sleep(ROUND_PAUSE.min(deadline.saturating_duration_since(Instant::now())));
        // A failed re-read keeps the last list: the agents it names are still asked.
        if let Ok(v) = read_peers() {
            view = v;
        }
    }
}

/// Why a peer gave no verdict, short: the cause, without the local agent's hints.
fn no_answer(e: &Error, timeout: Duration) -> String {
    match e {
        Error::Unreachable { cause, .. } if cause.timed_out() => {
            format!("no answer within {} ms", timeout.as_millis())
        }
        Error::Unreachable { cause, .. } => cause.to_string(),
        other => other.to_string(),
    }
}

/// Asks every peer for `path`, [`PEER_WORKERS`] at a time; the answers in `peers`' order.
fn ask_peers(peers: &[crate::peers::Peer], path: &str, timeout: Duration) -> Vec<PeerAnswer> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ask = || {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(peer) = peers.get(i) else {
                return mine;
            };
            let answer = get_json_within(peer.address, path, timeout)
                .map(|v| EndpointVerdict::of(&v))
                .map_err(|e| no_answer(&e, timeout));
            mine.push((i, answer));
        }
    };
    let mut answers: Vec<(usize, PeerAnswer)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..peers.len().min(PEER_WORKERS))
            .map(|_| s.spawn(ask))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("peer request thread panicked"))
            .collect()
    });
    answers.sort_by_key(|(i, _)| *i);
    answers.into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_three_spaces_apart_without_trailing_spaces() {
        let rows = vec![
            vec!["web-5d8f7".to_string(), "1/1".to_string(), String::new()],
            vec!["a".to_string(), "10/10".to_string(), "3m12s".to_string()],
        ];
        assert_eq!(
            table(&["NAME", "READY", "AGE"], &rows),
            "NAME        READY   AGE\n\
             web-5d8f7   1/1\n\
             a           10/10   3m12s\n"
        );
        // A tab or line break inside a cell stays inside its cell.
        let odd = vec![vec!["a\tb".to_string(), "c\nd".to_string()]];
        assert_eq!(table(&["X", "Y"], &odd), "X     Y\na b   c d\n");
    }
}
