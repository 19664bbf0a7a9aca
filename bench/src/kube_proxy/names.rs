//! Chain names as kube-proxy computes them.
//!
//! iptables mode (chain names are at most 28 characters): a prefix and the first 16
//! characters of base32(sha256(...)) of the `ServicePortName` string and the lower-case
//! protocol (and, for endpoint chains, the endpoint `ip:port`).
//!
//! nftables mode: a prefix and a readable base, `HASH-namespace/name/protocol/port-name` (and
//! `__ip/port` for endpoints), where HASH is the first 8 characters of base32(sha256(the rest)).

use std::net::SocketAddrV4;

use data_encoding::BASE32;
use sha2::{Digest, Sha256};

use super::Service;

/// base32 (RFC 4648, with padding, as Go's `base32.StdEncoding`) of sha256(`input`).
fn hash32(input: &str) -> String {
    BASE32.encode(&Sha256::digest(input.as_bytes()))
}

/// kube-proxy's `portProtoHash`: 16 characters.
pub fn port_proto_hash(service_port_name: &str, protocol: &str) -> String {
    hash32(&format!("{service_port_name}{protocol}"))[..16].to_owned()
}

fn service_hash(s: &Service) -> String {
    port_proto_hash(&s.port_name_string(), s.protocol.as_str())
}

/// `KUBE-SVC-…`: the service's endpoints under the Cluster traffic policy.
pub fn svc_chain(s: &Service) -> String {
    format!("KUBE-SVC-{}", service_hash(s))
}

/// `KUBE-SVL-…`: the service's local endpoints (the Local traffic policy).
pub fn svl_chain(s: &Service) -> String {
    format!("KUBE-SVL-{}", service_hash(s))
}

/// `KUBE-EXT-…`: external traffic (node ports, external and load-balancer IPs).
pub fn ext_chain(s: &Service) -> String {
    format!("KUBE-EXT-{}", service_hash(s))
}

/// `KUBE-SEP-…`: one endpoint of the service (DNAT).
pub fn sep_chain(s: &Service, endpoint: SocketAddrV4) -> String {
    let h = hash32(&format!(
        "{}{}{endpoint}",
        s.port_name_string(),
        s.protocol.as_str()
    ));
    format!("KUBE-SEP-{}", &h[..16])
}

/// nftables' longest name (knftables' `NameLengthMax`) less the longest prefix.
const NFT_BASE_MAX: usize = 256 - 16;

/// kube-proxy's `hashAndTruncate`.
fn hash_and_truncate(name: &str) -> String {
    let mut out = format!("{}-{name}", &hash32(name)[..8]);
    if out.len() > NFT_BASE_MAX {
        out.truncate(NFT_BASE_MAX - 3);
        out.push_str("...");
    }
    out
}

/// `HASH-namespace/name/protocol/port-name` (`servicePortChainNameBase`).
pub fn nft_service_base(s: &Service) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        s.namespace,
        s.name,
        s.protocol.as_str(),
        s.port_name
    ))
}

/// `HASH-namespace/name/protocol/port-name__ip/port` (`servicePortEndpointChainNameBase`).
pub fn nft_endpoint_base(s: &Service, endpoint: SocketAddrV4) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{}/{}",
        s.namespace,
        s.name,
        s.protocol.as_str(),
        s.port_name,
        endpoint.ip(),
        endpoint.port()
    ))
}

/// `service-…`: the Cluster-policy chain.
pub fn nft_service_chain(s: &Service) -> String {
    format!("service-{}", nft_service_base(s))
}

/// `local-…`: the Local-policy chain.
pub fn nft_local_chain(s: &Service) -> String {
    format!("local-{}", nft_service_base(s))
}

/// `external-…`: external traffic.
pub fn nft_external_chain(s: &Service) -> String {
    format!("external-{}", nft_service_base(s))
}

/// `endpoint-…`: one endpoint (DNAT).
pub fn nft_endpoint_chain(s: &Service, endpoint: SocketAddrV4) -> String {
    format!("endpoint-{}", nft_endpoint_base(s, endpoint))
}
