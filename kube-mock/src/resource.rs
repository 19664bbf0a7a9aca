//! The resource types the mock serves, derived from k8s-openapi's [`Resource`] constants so
//! that paths, kinds and scopes can never drift from the typed client's view.

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    coordination::v1::Lease,
    core::v1::{Event, Namespace, Node, Pod, Service},
    discovery::v1::EndpointSlice,
    events::v1::Event as EventsEvent,
};
use k8s_openapi::{ClusterResourceScope, ListableResource, NamespaceResourceScope, Resource};

/// Whether a k8s-openapi scope marker is namespaced (implemented for the two listable scopes).
pub trait ScopeKind {
    /// True for [`NamespaceResourceScope`], false for [`ClusterResourceScope`].
    const NAMESPACED: bool;
}

impl ScopeKind for NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl ScopeKind for ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// One resource type served by the mock: its group/version/kind, plural and scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResourceType {
    /// `apiVersion` of the objects, e.g. `"v1"` or `"discovery.k8s.io/v1"`.
    pub api_version: &'static str,
    /// API group, `""` for the core group.
    pub group: &'static str,
    /// Version within the group, e.g. `"v1"`.
    pub version: &'static str,
    /// `kind` of the objects, e.g. `"Service"`.
    pub kind: &'static str,
    /// `kind` of the list, e.g. `"ServiceList"`.
    pub list_kind: &'static str,
    /// Plural used in URLs, e.g. `"services"`; the mock's counters are keyed by it.
    pub plural: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Whether the real API server has a `/status` subresource for this type (writes to the
    /// main resource then keep the stored status, and writes to `/status` change only it).
    pub has_status: bool,
}

impl ResourceType {
    /// The descriptor of a k8s-openapi type.
    pub fn of<K>(has_status: bool) -> Self
    where
        K: Resource + ListableResource,
        K::Scope: ScopeKind,
    {
        Self {
            api_version: K::API_VERSION,
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            list_kind: K::LIST_KIND,
            plural: K::URL_PATH_SEGMENT,
            namespaced: <K::Scope as ScopeKind>::NAMESPACED,
            has_status,
        }
    }

    /// The URL prefix of the group version: `/api/v1` or `/apis/<group>/<version>`.
    pub fn group_prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The kube dynamic-API descriptor of this type (for the envtest backend).
    pub fn api_resource(&self) -> kube::api::ApiResource {
        kube::api::ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version.to_string(),
            kind: self.kind.to_string(),
            plural: self.plural.to_string(),
        }
    }
}

/// Every resource type the mock serves.
pub fn all() -> &'static [ResourceType] {
    static ALL: std::sync::OnceLock<Vec<ResourceType>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        vec![
            ResourceType::of::<Service>(true),
            ResourceType::of::<Node>(true),
            ResourceType::of::<EndpointSlice>(false),
            ResourceType::of::<Deployment>(true),
            ResourceType::of::<ReplicaSet>(true),
            ResourceType::of::<Lease>(false),
            ResourceType::of::<Event>(false),
            // events.k8s.io/v1, what kube-runtime's event Recorder writes.
            ResourceType::of::<EventsEvent>(false),
            ResourceType::of::<Pod>(true),
            ResourceType::of::<Namespace>(true),
        ]
    })
}

/// Finds a type by `kind` (`"Service"`) or plural (`"services"`), ignoring ASCII case.
pub fn lookup(kind_or_plural: &str) -> Option<ResourceType> {
    all().iter().copied().find(|r| {
        r.kind.eq_ignore_ascii_case(kind_or_plural) || r.plural.eq_ignore_ascii_case(kind_or_plural)
    })
}

/// Finds the type of an object by its `apiVersion` and `kind`.
pub fn by_api_version_kind(api_version: &str, kind: &str) -> Option<ResourceType> {
    all()
        .iter()
        .copied()
        .find(|r| r.api_version == api_version && r.kind == kind)
}

/// Finds the type served under a group/version and plural.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<ResourceType> {
    all()
        .iter()
        .copied()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_from_openapi_constants() {
        let svc = lookup("Service").expect("services");
        assert_eq!(svc.plural, "services");
        assert!(svc.namespaced);
        assert_eq!(svc.group_prefix(), "/api/v1");
        let node = lookup("nodes").expect("nodes");
        assert!(!node.namespaced);
        let eps = by_api_version_kind("discovery.k8s.io/v1", "EndpointSlice").expect("slices");
        assert_eq!(eps.group_prefix(), "/apis/discovery.k8s.io/v1");
        assert_eq!(eps.list_kind, "EndpointSliceList");
        assert_eq!(
            by_path("apps", "v1", "replicasets").map(|r| r.kind),
            Some("ReplicaSet")
        );
    }
}
