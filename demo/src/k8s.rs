//! The Kubernetes side of the walkthrough: names as Kubernetes makes them, and the objects
//! (Service, EndpointSlice, Deployment), built as k8s-openapi types and sent to the agent's
//! API as the JSON an API server would print.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::{
    api::{
        apps::v1::{
            Deployment, DeploymentCondition, DeploymentSpec, DeploymentStatus, DeploymentStrategy,
            RollingUpdateDeployment,
        },
        core::v1::{
            Container, ContainerPort, HTTPGetAction, LoadBalancerIngress, LoadBalancerStatus,
            ObjectReference, PodSpec, PodTemplateSpec, Probe, Service, ServicePort, ServiceSpec,
            ServiceStatus,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use serde_json::Value;

/// The namespace of every object.
pub const NAMESPACE: &str = "default";
/// The Deployment, its Service, container and `app` label.
pub const APP: &str = "kubernetes-bootcamp";
/// The node name put in EndpointSlice endpoints.
pub const NODE_NAME: &str = "sluice-lab-node";
/// The container port every pod serves on.
pub const CONTAINER_PORT: u16 = 8080;

/// The characters Kubernetes uses in generated names (no vowels, no look-alikes).
const SAFE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// The image of a version, as the tutorial names them.
pub fn image(version: u32) -> String {
    match version {
        2 => "jocatalin/kubernetes-bootcamp:v2".to_owned(),
        v => format!("gcr.io/google-samples/kubernetes-bootcamp:v{v}"),
    }
}

/// The pod-template-hash of a pod template running `image`: FNV-1a (32 bit) of the template,
/// its decimal form encoded as Kubernetes' `rand.SafeEncodeString` does (`9bc58d867`).
pub fn template_hash(image: &str) -> String {
    let template = format!("{APP}/{APP}={image}");
    let mut hash: u32 = 0x811c_9dc5;
    for b in template.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|b| char::from(SAFE_ALPHABET[usize::from(b) % SAFE_ALPHABET.len()]))
        .collect()
}

/// A small deterministic generator for name suffixes (xorshift64*), seeded per run.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the clock and the process id.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::new(nanos ^ (u64::from(std::process::id()) << 32))
    }

    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `n` characters of the safe alphabet, as in pod name suffixes (`j7852`).
    pub fn suffix(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| {
                let i = (self.next_u64() % SAFE_ALPHABET.len() as u64) as usize;
                char::from(SAFE_ALPHABET[i])
            })
            .collect()
    }
}

/// API paths of the objects.
pub fn service_path(name: &str) -> String {
    format!("/api/v1/namespaces/{NAMESPACE}/services/{name}")
}

pub fn slice_path(name: &str) -> String {
    format!("/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices/{name}")
}

pub fn deployment_path(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}")
}

/// How a Service is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// `type: NodePort` on this node port.
    NodePort { node_port: u16 },
    /// `type: LoadBalancer` with this ingress VIP (and a node port, as Kubernetes
    /// allocates one for LoadBalancer services too).
    LoadBalancer { node_port: u16, vip: Ipv4Addr },
}

impl Exposure {
    pub fn type_name(&self) -> &'static str {
        match self {
            Exposure::NodePort { .. } => "NodePort",
            Exposure::LoadBalancer { .. } => "LoadBalancer",
        }
    }

    pub fn node_port(&self) -> u16 {
        match *self {
            Exposure::NodePort { node_port } | Exposure::LoadBalancer { node_port, .. } => {
                node_port
            }
        }
    }

    pub fn vip(&self) -> Option<Ipv4Addr> {
        match *self {
            Exposure::NodePort { .. } => None,
            Exposure::LoadBalancer { vip, .. } => Some(vip),
        }
    }
}

fn meta(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(NAMESPACE.to_owned()),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Default::default()
    }
}

fn app_labels() -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), APP.to_owned())])
}

fn to_json<T: serde::Serialize>(object: &T) -> Value {
    serde_json::to_value(object).expect("k8s-openapi objects serialize")
}

/// `kubectl expose deployment/<APP> --type=<type> --port <port>`: a Service selecting
/// `app=<APP>`, with the LoadBalancer VIP in `status.loadBalancer.ingress`.
pub fn service(name: &str, port: u16, exposure: Exposure) -> Value {
    let svc = Service {
        metadata: meta(name, &[("app", APP)]),
        spec: Some(ServiceSpec {
            type_: Some(exposure.type_name().to_owned()),
            selector: Some(app_labels()),
            ports: Some(vec![ServicePort {
                protocol: Some("TCP".to_owned()),
                port: port.into(),
                target_port: Some(IntOrString::Int(CONTAINER_PORT.into())),
                node_port: Some(exposure.node_port().into()),
                ..Default::default()
            }]),
            session_affinity: Some("None".to_owned()),
            external_traffic_policy: Some("Cluster".to_owned()),
            ..Default::default()
        }),
        status: exposure.vip().map(|vip| ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some(vip.to_string()),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        }),
    };
    to_json(&svc)
}

/// One endpoint of a slice: a pod's address and conditions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointEntry {
    pub pod: String,
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// The EndpointSlice of `service` listing `endpoints` on the container port.
pub fn endpoint_slice(name: &str, service: &str, endpoints: &[EndpointEntry]) -> Value {
    let slice = EndpointSlice {
        metadata: meta(
            name,
            &[
                ("kubernetes.io/service-name", service),
                ("endpointslice.kubernetes.io/managed-by", "sluice-demo"),
            ],
        ),
        address_type: "IPv4".to_owned(),
        ports: Some(vec![EndpointPort {
            name: Some(String::new()),
            protocol: Some("TCP".to_owned()),
            port: Some(CONTAINER_PORT.into()),
            ..Default::default()
        }]),
        endpoints: Some(
            endpoints
                .iter()
                .map(|e| Endpoint {
                    addresses: vec![e.ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(e.ready),
                        serving: Some(e.serving),
                        terminating: Some(e.terminating),
                    }),
                    node_name: Some(NODE_NAME.to_owned()),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".to_owned()),
                        name: Some(e.pod.clone()),
                        namespace: Some(NAMESPACE.to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
    };
    to_json(&slice)
}

/// A Deployment condition: (type, status, reason, message).
pub type Condition = (&'static str, &'static str, &'static str, String);

/// What a Deployment object says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentView {
    pub name: String,
    pub replicas: u32,
    pub image: String,
    pub revision: u64,
    pub generation: i64,
    pub max_surge: u32,
    pub max_unavailable: u32,
    pub progress_deadline_s: u64,
    /// Pods that are not terminating.
    pub status_replicas: u32,
    pub updated: u32,
    pub ready: u32,
    pub available: u32,
    pub conditions: Vec<Condition>,
}

/// The Deployment in its Kubernetes shape, spec and status.
pub fn deployment(d: &DeploymentView) -> Value {
    let int = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let mut metadata = meta(&d.name, &[("app", APP)]);
    metadata.annotations = Some(BTreeMap::from([(
        "deployment.kubernetes.io/revision".to_owned(),
        d.revision.to_string(),
    )]));
    metadata.generation = Some(d.generation);
    let deployment = Deployment {
        metadata,
        spec: DeploymentSpec {
            replicas: Some(int(d.replicas)),
            selector: LabelSelector {
                match_labels: Some(app_labels()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(app_labels()),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: APP.to_owned(),
                        image: Some(d.image.clone()),
                        ports: Some(vec![ContainerPort {
                            container_port: CONTAINER_PORT.into(),
                            ..Default::default()
                        }]),
                        readiness_probe: Some(Probe {
                            http_get: Some(HTTPGetAction {
                                path: Some("/ready".to_owned()),
                                port: IntOrString::Int(CONTAINER_PORT.into()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(int(d.max_surge))),
                    max_unavailable: Some(IntOrString::Int(int(d.max_unavailable))),
                }),
            }),
            progress_deadline_seconds: Some(
                i32::try_from(d.progress_deadline_s).unwrap_or(i32::MAX),
            ),
            ..Default::default()
        },
        status: Some(DeploymentStatus {
            observed_generation: Some(d.generation),
            replicas: Some(int(d.status_replicas)),
            updated_replicas: Some(int(d.updated)),
            ready_replicas: Some(int(d.ready)),
            available_replicas: Some(int(d.available)),
            unavailable_replicas: Some(int(d.replicas.saturating_sub(d.available))),
            conditions: Some(
                d.conditions
                    .iter()
                    .map(|(t, s, r, m)| DeploymentCondition {
                        type_: Some((*t).to_owned()),
                        status: Some((*s).to_owned()),
                        reason: Some((*r).to_owned()),
                        message: Some(m.clone()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
    };
    to_json(&deployment)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_look_like_kubernetes_names() {
        let v1 = template_hash(&image(1));
        // FNV-1a (32 bit) of "kubernetes-bootcamp/kubernetes-bootcamp=<image>" is 3249264833
        // for v1 and 3011007219 for v2 (computed apart from this code); each decimal digit
        // `d` (byte 48 + d) becomes SAFE_ALPHABET[(48 + d) % 27].
        assert_eq!(v1, "768f6b8d77");
        assert_eq!(template_hash(&image(2)), "745544c65f");
        assert!(
            v1.len() >= 6 && v1.bytes().all(|b| SAFE_ALPHABET.contains(&b)),
            "{v1}"
        );
        // Name suffixes: xorshift64* (shifts 12, 25, 27, multiplier 0x2545f4914f6cdd1d) from
        // state 7, each output modulo 27 picking a SAFE_ALPHABET character (computed apart
        // from this code). Each call goes on where the last one stopped; seed 0 runs from state
        // 1 (a zero state would give "bbbbb" forever).
        let mut rng = Rng::new(7);
        assert_eq!(
            [rng.suffix(5), rng.suffix(5), rng.suffix(5)],
            ["g67tl", "vwk5l", "9l4nc"]
        );
        assert_eq!(Rng::new(0).suffix(5), "nlzjh");
    }

    #[test]
    fn objects_have_kubernetes_shapes() {
        let lb = Exposure::LoadBalancer {
            node_port: 30080,
            vip: Ipv4Addr::new(203, 0, 113, 10),
        };
        let svc = service(APP, 8080, lb);
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
        assert_eq!(
            svc["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.10"
        );
        let np = service(APP, 8080, Exposure::NodePort { node_port: 30080 });
        assert!(np.get("status").is_none());

        let slice = endpoint_slice(
            "kubernetes-bootcamp-abcde",
            APP,
            &[EndpointEntry {
                pod: "p".into(),
                ip: Ipv4Addr::new(198, 51, 100, 2),
                ready: false,
                serving: true,
                terminating: true,
            }],
        );
        assert_eq!(
            slice["metadata"]["labels"]["kubernetes.io/service-name"],
            APP
        );
        assert_eq!(slice["endpoints"][0]["conditions"]["terminating"], true);
        assert_eq!(slice["endpoints"][0]["targetRef"]["kind"], "Pod");

        let d = deployment(&DeploymentView {
            name: APP.into(),
            replicas: 2,
            image: image(2),
            revision: 4,
            generation: 5,
            max_surge: 1,
            max_unavailable: 1,
            progress_deadline_s: 6,
            status_replicas: 2,
            updated: 2,
            ready: 2,
            available: 2,
            conditions: vec![(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                "done".into(),
            )],
        });
        assert_eq!(
            d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "4"
        );
        assert_eq!(d["status"]["unavailableReplicas"], 0);
        assert_eq!(
            d["status"]["conditions"][0]["reason"],
            "NewReplicaSetAvailable"
        );
    }
}
