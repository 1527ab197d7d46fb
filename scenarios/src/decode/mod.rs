//! Located YAML tree → the document as written ([`ast::Doc`]): every key known, every value of
//! the right type and syntax. Errors are collected, not returned at the first: a bad value is
//! reported and left out, and decoding goes on with the next key or item.
//!
//! References between parts (which node a pod is on, which pod a step names) are checked later,
//! in `world::build`, once the whole document is known.

pub(crate) mod ast;
mod dns;
mod expect;
mod steps;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ambient_proxy::istio::{self, API_VERSIONS, PolicyObject};

use crate::diag::{At, Diagnostics, Located, list};
use crate::values;
use crate::world::{App, ServicePort};
use crate::yaml::{Node, Value, de};
use ast::{Cluster, Doc, ExternalDoc, PodDoc, PolicyDoc, ServiceDoc};

/// A value in the document with where it is.
#[derive(Debug, Clone)]
pub(crate) struct Field<'n> {
    pub node: &'n Node,
    pub at: At,
}

impl<'n> Field<'n> {
    pub fn root(node: &'n Node) -> Self {
        Field { node, at: At::new(node.pos, crate::diag::KeyPath::root()) }
    }

    fn child(&self, node: &'n Node, key: &str) -> Field<'n> {
        Field { node, at: At::new(node.pos, self.at.path.key(key)) }
    }

    fn item(&self, node: &'n Node, index: usize) -> Field<'n> {
        Field { node, at: At::new(node.pos, self.at.path.index(index)) }
    }
}

/// The known keys of a mapping, after unknown and duplicate keys were reported.
#[derive(Debug)]
pub(crate) struct Entries<'n> {
    pub at: At,
    fields: Vec<(&'static str, Field<'n>)>,
}

impl<'n> Entries<'n> {
    pub fn get(&self, key: &str) -> Option<Field<'n>> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, f)| f.clone())
    }

    /// The keys present, in the order written.
    pub fn keys(&self) -> Vec<&'static str> {
        self.fields.iter().map(|(k, _)| *k).collect()
    }
}

/// How a value is shown in "found …": strings quoted, numbers as written.
pub(crate) fn found(node: &Node) -> String {
    node.describe()
}

/// The decoder: the diagnostics so far, and typed readers that report what they reject.
pub(crate) struct Dec<'d> {
    pub diags: &'d mut Diagnostics,
}

impl Dec<'_> {
    pub fn err(&mut self, at: &At, message: impl Into<String>) {
        self.diags.error_at(at, message);
    }

    fn expected(&mut self, f: &Field<'_>, what: &str) {
        self.err(&f.at, format!("expected {what}, found {}", found(f.node)));
    }

    /// A mapping whose keys must be among `allowed`.
    pub fn map<'n>(&mut self, f: &Field<'n>, allowed: &[&'static str]) -> Option<Entries<'n>> {
        let pairs = self.pairs(f)?;
        let mut fields = Vec::new();
        for (key, value) in pairs {
            if let Some(known) = allowed.iter().find(|a| **a == key.value) {
                fields.push((*known, value));
            } else {
                let msg =
                    format!("unknown key `{}`; allowed keys are {}", key.value, list(allowed));
                self.err(&key.at, msg);
            }
        }
        Some(Entries { at: f.at.clone(), fields })
    }

    /// A mapping with keys of the user's choosing (labels, connection ids, node pairs …), in the
    /// order written. Keys must be scalars; duplicates are reported and dropped.
    pub fn pairs<'n>(&mut self, f: &Field<'n>) -> Option<Vec<(Located<String>, Field<'n>)>> {
        let Value::Map(entries) = &f.node.value else {
            self.expected(f, "a mapping");
            return None;
        };
        let mut out: Vec<(Located<String>, Field<'n>)> = Vec::new();
        for (k, v) in entries {
            let Some(key) = k.as_text() else {
                let at = At::new(k.pos, f.at.path.clone());
                self.err(&at, format!("expected a text key, found {}", found(k)));
                continue;
            };
            let key_at = At::new(k.pos, f.at.path.key(key));
            if let Some((first, _)) = out.iter().find(|(o, _)| o.value == key) {
                let msg = format!("duplicate key `{key}` (first written at {})", first.at.pos);
                self.err(&key_at, msg);
                continue;
            }
            let value = f.child(v, key);
            out.push((Located::new(key.to_string(), key_at), value));
        }
        Some(out)
    }

    /// The value of a key that must be present.
    pub fn req<'n>(&mut self, m: &Entries<'n>, key: &str) -> Option<Field<'n>> {
        let f = m.get(key);
        if f.is_none() {
            self.err(&m.at, format!("missing key `{key}`"));
        }
        f
    }

    pub fn list<'n>(&mut self, f: &Field<'n>) -> Option<Vec<Field<'n>>> {
        match &f.node.value {
            Value::Seq(items) => {
                Some(items.iter().enumerate().map(|(i, n)| f.item(n, i)).collect())
            }
            _ => {
                self.expected(f, "a list");
                None
            }
        }
    }

    pub fn text(&mut self, f: &Field<'_>) -> Option<String> {
        match f.node.as_text() {
            Some(t) => Some(t.to_string()),
            None => {
                self.expected(f, "a string");
                None
            }
        }
    }

    pub fn located_text(&mut self, f: &Field<'_>) -> Option<Located<String>> {
        self.text(f).map(|t| Located::new(t, f.at.clone()))
    }

    /// Text parsed by `p`, whose error message is reported at the value.
    pub fn parse<T>(
        &mut self,
        f: &Field<'_>,
        p: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(f)?;
        match p(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(&f.at, e);
                None
            }
        }
    }

    /// A name (DNS label).
    pub fn name(&mut self, f: &Field<'_>) -> Option<Located<String>> {
        self.parse(f, |t| values::check_label(t).map(|()| t.to_string()))
            .map(|v| Located::new(v, f.at.clone()))
    }

    pub fn uint(&mut self, f: &Field<'_>, min: u64, max: u64) -> Option<u64> {
        match f.node.value {
            Value::Int(i) if i >= i128::from(min) && i <= i128::from(max) => u64::try_from(i).ok(),
            Value::Int(i) => {
                self.err(&f.at, format!("{i} is out of range {min}-{max}"));
                None
            }
            _ => {
                self.expected(f, &format!("an integer from {min} to {max}"));
                None
            }
        }
    }

    pub fn boolean(&mut self, f: &Field<'_>) -> Option<bool> {
        match f.node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.expected(f, "true or false");
                None
            }
        }
    }

    pub fn port(&mut self, f: &Field<'_>) -> Option<u16> {
        match (&f.node.value, f.node.as_text()) {
            (Value::Int(i), _) if (1..=65535).contains(i) => u16::try_from(*i).ok(),
            (Value::Int(i), _) => {
                self.err(&f.at, format!("port {i} is out of range 1-65535"));
                None
            }
            (Value::Str(_), Some(t)) => self.parse(f, |_| values::parse_port(t)),
            _ => {
                self.expected(f, "a port number (1-65535)");
                None
            }
        }
    }

    pub fn size(&mut self, f: &Field<'_>) -> Option<u64> {
        match f.node.value {
            Value::Int(i) if i >= 0 => match u64::try_from(i) {
                Ok(n) => Some(n),
                Err(_) => {
                    self.err(&f.at, format!("size {i} is too large: at most {} bytes", u64::MAX));
                    None
                }
            },
            Value::Int(i) => {
                self.err(&f.at, format!("a size cannot be negative, found {i}"));
                None
            }
            Value::Str(_) => self.parse(f, values::parse_size),
            _ => {
                self.expected(f, "a size such as 1024, 64KiB or 1MiB");
                None
            }
        }
    }

    pub fn duration(&mut self, f: &Field<'_>) -> Option<std::time::Duration> {
        match f.node.value {
            Value::Int(_) | Value::Str(_) => self.parse(f, values::parse_duration),
            _ => {
                self.expected(f, "a duration such as 250ms, 30s, 5m or 2h");
                None
            }
        }
    }

    pub fn ip(&mut self, f: &Field<'_>) -> Option<Located<Ipv4Addr>> {
        self.parse(f, values::parse_host_ip).map(|ip| Located::new(ip, f.at.clone()))
    }

    /// An external host's address: the kubelet probe address is allowed too.
    pub fn external_ip(&mut self, f: &Field<'_>) -> Option<Located<Ipv4Addr>> {
        self.parse(f, values::parse_external_ip).map(|ip| Located::new(ip, f.at.clone()))
    }

    /// `key: value` string pairs: labels and selectors.
    pub fn labels(&mut self, f: &Field<'_>) -> Option<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for (key, value) in self.pairs(f)? {
            if let Err(e) = check_label_key(&key.value) {
                self.err(&key.at, e);
                continue;
            }
            let Some(v) = self.text(&value) else { continue };
            if let Err(e) = check_label_value(&v) {
                self.err(&value.at, e);
                continue;
            }
            out.insert(key.value, v);
        }
        Some(out)
    }
}

/// Kubernetes label keys: `[prefix/]name`, name 1–63 of alphanumerics, `-`, `_`, `.`.
fn check_label_key(key: &str) -> Result<(), String> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let prefix_ok = key.rsplit_once('/').is_none_or(|(p, _)| values::check_subdomain(p).is_ok());
    if prefix_ok && check_label_value(name).is_ok() && !name.is_empty() {
        Ok(())
    } else {
        Err(format!("{key:?} is not a valid label key"))
    }
}

/// Kubernetes label values: up to 63 of alphanumerics, `-`, `_`, `.`, alphanumeric at both ends.
fn check_label_value(v: &str) -> Result<(), String> {
    let ok = v.len() <= 63
        && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(format!("{v:?} is not a valid label value")) }
}

const TOP_KEYS: &[&str] =
    &["scenario", "description", "tags", "seed", "cluster", "policies", "steps", "expect"];

/// Decodes a whole scenario document. Problems go to `diags`; the returned document holds what
/// could be decoded and is only meaningful when `diags` has no errors.
pub(crate) fn decode(root: &Node, diags: &mut Diagnostics) -> Doc {
    let mut d = Dec { diags };
    let top = Field::root(root);
    let mut doc = Doc { at: top.at.clone(), ..Doc::default() };
    let Some(m) = d.map(&top, TOP_KEYS) else { return doc };
    if let Some(f) = m.get("scenario") {
        doc.scenario = d
            .parse(&f, |t| values::check_id(t).map(|()| t.to_string()))
            .map(|id| Located::new(id, f.at.clone()));
    }
    if let Some(f) = d.req(&m, "description")
        && let Some(text) = d.text(&f)
    {
        if text.trim().is_empty() {
            d.err(&f.at, "the description is empty; say what the scenario shows");
        }
        doc.description = text.trim().to_string();
    }
    if let Some(f) = m.get("tags") {
        for item in d.list(&f).unwrap_or_default() {
            if let Some(tag) = d.parse(&item, |t| values::check_id(t).map(|()| t.to_string())) {
                if doc.tags.iter().any(|t| t.value == tag) {
                    d.diags.warning_at(&item.at, format!("tag {tag:?} is listed twice"));
                } else {
                    doc.tags.push(Located::new(tag, item.at));
                }
            }
        }
    }
    if let Some(f) = m.get("seed") {
        doc.seed = d.uint(&f, 0, u64::MAX).unwrap_or(0);
    }
    if let Some(f) = d.req(&m, "cluster") {
        doc.cluster = cluster(&mut d, &f);
    }
    if let Some(f) = m.get("policies") {
        for item in d.list(&f).unwrap_or_default() {
            doc.policies.extend(policy(&mut d, &item));
        }
    }
    if let Some(f) = d.req(&m, "steps") {
        doc.steps = steps::steps(&mut d, &f);
    }
    if let Some(f) = m.get("expect") {
        doc.expect = expect::expect_block(&mut d, &f);
    }
    doc
}

const CLUSTER_KEYS: &[&str] = &["trustDomain", "nodes", "pods", "services", "external"];

fn cluster(d: &mut Dec<'_>, f: &Field<'_>) -> Cluster {
    let mut c = Cluster {
        trust_domain: Located::new("cluster.local".to_string(), f.at.clone()),
        ..Cluster::default()
    };
    let Some(m) = d.map(f, CLUSTER_KEYS) else { return c };
    if let Some(f) = m.get("trustDomain")
        && let Some(td) = d.parse(&f, |t| values::check_subdomain(t).map(|()| t.to_string()))
    {
        c.trust_domain = Located::new(td, f.at.clone());
    }
    if let Some(f) = d.req(&m, "nodes") {
        let items = d.list(&f).unwrap_or_default();
        if items.is_empty() && matches!(f.node.value, Value::Seq(_)) {
            d.err(&f.at, "a cluster needs at least one node");
        }
        c.nodes = items.iter().filter_map(|i| d.name(i)).collect();
    }
    if let Some(f) = m.get("pods") {
        c.pods = d.list(&f).unwrap_or_default().iter().filter_map(|i| pod(d, i)).collect();
    }
    if let Some(f) = m.get("services") {
        c.services = d.list(&f).unwrap_or_default().iter().filter_map(|i| service(d, i)).collect();
    }
    if let Some(f) = m.get("external") {
        c.external = d.list(&f).unwrap_or_default().iter().filter_map(|i| external(d, i)).collect();
    }
    c
}

const POD_KEYS: &[&str] =
    &["name", "namespace", "node", "serviceAccount", "ambient", "labels", "ip", "serve"];

/// A pod, as under `cluster.pods` or in an `add-pod` fault. `None` if anything in it is wrong.
pub(crate) fn pod(d: &mut Dec<'_>, f: &Field<'_>) -> Option<PodDoc> {
    let before = d.diags.error_count();
    let m = d.map(f, POD_KEYS)?;
    let name = d.req(&m, "name").and_then(|f| d.name(&f));
    let namespace = match m.get("namespace") {
        Some(f) => d.name(&f),
        None => Some(Located::new("default".to_string(), m.at.clone())),
    };
    let node = d.req(&m, "node").and_then(|f| d.name(&f));
    let service_account = match m.get("serviceAccount") {
        Some(f) => d
            .parse(&f, |t| values::check_subdomain(t).map(|()| t.to_string()))
            .map(|sa| Located::new(sa, f.at.clone())),
        None => Some(Located::new("default".to_string(), m.at.clone())),
    };
    let ambient = m.get("ambient").map_or(Some(false), |f| d.boolean(&f));
    let labels = m.get("labels").map_or(Some(BTreeMap::new()), |f| d.labels(&f));
    let ip = m.get("ip").map(|f| d.ip(&f));
    let serve = m.get("serve").map_or(Some(Vec::new()), |f| serve(d, &f));
    if d.diags.error_count() > before {
        return None;
    }
    Some(PodDoc {
        at: f.at.clone(),
        name: name?,
        namespace: namespace?,
        node: node?,
        service_account: service_account?,
        ambient: ambient?,
        labels: labels?,
        ip: ip.flatten(),
        serve: serve?,
    })
}

/// `serve: [{port: 8080, app: echo}]`.
fn serve(d: &mut Dec<'_>, f: &Field<'_>) -> Option<Vec<Located<(u16, App)>>> {
    let mut out: Vec<Located<(u16, App)>> = Vec::new();
    for item in d.list(f)? {
        let Some(m) = d.map(&item, &["port", "app"]) else { continue };
        let port = d.req(&m, "port").and_then(|f| d.port(&f));
        let app = d.req(&m, "app").and_then(|f| d.parse(&f, App::parse));
        let (Some(port), Some(app)) = (port, app) else { continue };
        if let Some(first) = out.iter().find(|s| s.value.0 == port) {
            let msg = format!("port {port} is served twice (first at {})", first.at.pos);
            d.err(&m.get("port").map_or(item.at.clone(), |p| p.at), msg);
            continue;
        }
        out.push(Located::new((port, app), item.at));
    }
    Some(out)
}

const SERVICE_KEYS: &[&str] = &["name", "namespace", "vip", "selector", "ports"];

fn service(d: &mut Dec<'_>, f: &Field<'_>) -> Option<ServiceDoc> {
    let before = d.diags.error_count();
    let m = d.map(f, SERVICE_KEYS)?;
    let name = d.req(&m, "name").and_then(|f| d.name(&f));
    let namespace = match m.get("namespace") {
        Some(f) => d.name(&f),
        None => Some(Located::new("default".to_string(), m.at.clone())),
    };
    let vip = d.req(&m, "vip").and_then(|f| d.ip(&f));
    let selector =
        d.req(&m, "selector").and_then(|f| d.labels(&f).map(|s| Located::new(s, f.at.clone())));
    let mut ports: Vec<Located<ServicePort>> = Vec::new();
    if let Some(pf) = d.req(&m, "ports") {
        let items = d.list(&pf).unwrap_or_default();
        if items.is_empty() && matches!(pf.node.value, Value::Seq(_)) {
            d.err(&pf.at, "a service needs at least one port");
        }
        for item in items {
            let Some(pm) = d.map(&item, &["port", "targetPort"]) else { continue };
            let Some(port) = d.req(&pm, "port").and_then(|f| d.port(&f)) else { continue };
            let target_port = match pm.get("targetPort") {
                Some(f) => match d.port(&f) {
                    Some(p) => p,
                    None => continue,
                },
                None => port,
            };
            if let Some(first) = ports.iter().find(|p| p.value.port == port) {
                let msg = format!("port {port} is listed twice (first at {})", first.at.pos);
                d.err(&pm.get("port").map_or(item.at.clone(), |p| p.at), msg);
                continue;
            }
            ports.push(Located::new(ServicePort { port, target_port }, item.at));
        }
    }
    if d.diags.error_count() > before {
        return None;
    }
    Some(ServiceDoc {
        at: f.at.clone(),
        name: name?,
        namespace: namespace?,
        vip: vip?,
        selector: selector?,
        ports,
    })
}

fn external(d: &mut Dec<'_>, f: &Field<'_>) -> Option<ExternalDoc> {
    let before = d.diags.error_count();
    let m = d.map(f, &["name", "ip", "serve", "dns"])?;
    let name = d.req(&m, "name").and_then(|f| d.name(&f));
    let ip = d.req(&m, "ip").and_then(|f| d.external_ip(&f));
    let serve = m.get("serve").map_or(Some(Vec::new()), |f| serve(d, &f));
    let dns = m.get("dns").map(|f| dns::dns_block(d, &f));
    if d.diags.error_count() > before {
        return None;
    }
    Some(ExternalDoc { at: f.at.clone(), name: name?, ip: ip?, serve: serve?, dns: dns.flatten() })
}

const KINDS: [&str; 2] = ["AuthorizationPolicy", "PeerAuthentication"];

/// An Istio object: `apiVersion` and `kind` checked here, the rest decoded into the
/// `ambient_proxy::istio` types (unknown fields rejected there, with their key paths).
pub(crate) fn policy(d: &mut Dec<'_>, f: &Field<'_>) -> Option<PolicyDoc> {
    let Value::Map(entries) = &f.node.value else {
        d.expected(f, "an Istio object (AuthorizationPolicy or PeerAuthentication)");
        return None;
    };
    let mut get = |key: &str| match f.node.get(key) {
        Some(v) => d.located_text(&f.child(v, key)),
        None => {
            d.err(&f.at, format!("missing key `{key}`"));
            None
        }
    };
    let (api, kind) = (get("apiVersion"), get("kind"));
    let (api, kind) = (api?, kind?);
    if !API_VERSIONS.contains(&api.value.as_str()) {
        let msg = format!(
            "unsupported apiVersion {:?}; expected {}",
            api.value,
            API_VERSIONS.join(" or ")
        );
        d.err(&api.at, msg);
        return None;
    }
    if !KINDS.contains(&kind.value.as_str()) {
        let msg = format!("unsupported kind {:?}; expected {}", kind.value, KINDS.join(" or "));
        d.err(&kind.at, msg);
        return None;
    }
    // The object without `kind` (the per-kind types do not have that field).
    let body = Node {
        pos: f.node.pos,
        value: Value::Map(
            entries.iter().filter(|(k, _)| k.as_text() != Some("kind")).cloned().collect(),
        ),
        plain: None,
    };
    let decoded = if kind.value == KINDS[0] {
        de::from_node::<istio::AuthorizationPolicy>(&body, &f.at.path)
            .map(PolicyObject::AuthorizationPolicy)
    } else {
        de::from_node::<istio::PeerAuthentication>(&body, &f.at.path)
            .map(PolicyObject::PeerAuthentication)
    };
    match decoded {
        Ok(object) => Some(PolicyDoc { at: f.at.clone(), node: f.node.clone(), object }),
        Err(e) => {
            let at = At::new(e.pos.unwrap_or(f.at.pos), e.path.unwrap_or(f.at.path.clone()));
            d.err(&at, e.message);
            None
        }
    }
}
