//! The two Services: `NAME-peers` (headless, stable member names) and `NAME`
//! (what clients and injected sidecars call).

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, GRPC_PORT, HTTP_PORT};

fn port(name: &str, number: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port: number,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        app_protocol: Some(
            if name == "grpc" {
                "kubernetes.io/h2c"
            } else {
                "http"
            }
            .into(),
        ),
        ..ServicePort::default()
    }
}

/// The headless Service behind the members' DNS names. Not-ready members are
/// published too: a member starting up must be reachable by its peers before
/// it can report ready.
pub fn peers_service(names: &Names, owner: &OwnerReference) -> Service {
    Service {
        metadata: names.child_meta(names.peers_service(), owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(names.selector_labels()),
            ports: Some(vec![port("grpc", GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The client Service: HTTP traffic and gRPC for cluster clients.
pub fn client_service(names: &Names, owner: &OwnerReference) -> Service {
    Service {
        metadata: names.child_meta(names.name.clone(), owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(names.selector_labels()),
            ports: Some(vec![port("http", HTTP_PORT), port("grpc", GRPC_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::*;
    use serde_json::json;

    #[test]
    fn peers_service_is_headless_and_publishes_not_ready_members() {
        let rc = rc("web", json!({}));
        let names = Names::of(&rc).unwrap();
        let svc = peers_service(&names, &owner(&rc));
        assert_eq!(svc.metadata.name.as_deref(), Some("web-peers"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector, Some(names.selector_labels()));
        let ports = spec.ports.unwrap();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].name.as_deref(), Some("grpc"));
        assert_eq!(ports[0].port, 3320);
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("grpc".into()))
        );
    }

    #[test]
    fn client_service_serves_http_and_grpc() {
        let rc = rc("web", json!({}));
        let names = Names::of(&rc).unwrap();
        let svc = client_service(&names, &owner(&rc));
        assert_eq!(svc.metadata.name.as_deref(), Some("web"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip, None, "a normal ClusterIP Service");
        assert_eq!(spec.publish_not_ready_addresses, None);
        let ports: Vec<(String, i32)> = spec
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(
            ports,
            [("http".to_string(), 8787), ("grpc".to_string(), 3320)]
        );
    }
}
