//! Helpers shared by the authorization tests.
#![allow(dead_code)]

use std::net::IpAddr;

use ambient_proxy::identity::Identity;
use ambient_proxy::istio::PolicyObject;
use ambient_proxy::mesh::Workload;
use ambient_proxy::policy::ConnectionAttrs;
use serde_json::Value;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn obj(v: Value) -> PolicyObject {
    serde_json::from_value(v).unwrap()
}

pub fn ap(name: &str, ns: &str, spec: Value) -> PolicyObject {
    obj(serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

pub fn pa(name: &str, ns: &str, spec: Value) -> PolicyObject {
    obj(serde_json::json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

pub fn server() -> Workload {
    Workload::new("server", "node-b", ip("10.0.2.5")).service_account("echo").label("app", "echo")
}

pub fn conn(id: Option<&str>, src: &str, port: u16) -> ConnectionAttrs {
    ConnectionAttrs {
        source_ip: ip(src),
        source_identity: id.map(|s| s.parse::<Identity>().unwrap()),
        destination_ip: ip("10.0.2.5"),
        destination_port: port,
    }
}

pub const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
pub const PROD: &str = "spiffe://cluster.local/ns/prod/sa/api";
