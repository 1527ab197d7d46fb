//! Inbound decisions (ports 15008 and 15006), pure: validating an HBONE CONNECT request into a
//! target and a status code, parsing `Forwarded`, and refusing self-calls.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use crate::inpod::SELF_CALL_PORTS;
use crate::mesh::{MeshState, Workload};

/// Why an inbound request is refused before authorization, with the HTTP status it gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub status: u16,
    pub reason: String,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.reason)
    }
}

fn bad_request(reason: impl Into<String>) -> Rejection {
    Rejection { status: 400, reason: reason.into() }
}

/// A well-formed CONNECT whose target cannot be served: ztunnel answers 503 when the target
/// port is one of its own (it finds the self-call while resolving the upstream), and so do we.
fn unavailable(reason: impl Into<String>) -> Rejection {
    Rejection { status: 503, reason: reason.into() }
}

/// An HBONE request as the h2 server received it (only what the decision needs).
#[derive(Debug, Clone, Copy)]
pub struct ConnectRequest<'a> {
    pub method: &'a str,
    /// `:authority`, `None` if absent.
    pub authority: Option<&'a str>,
}

/// Validate a CONNECT request for `node`: method CONNECT, authority `ip:port`, not a self-call,
/// target a captured pod of this node. Returns the target and its workload.
pub fn check_connect<'m>(
    mesh: &'m MeshState,
    node: &str,
    req: ConnectRequest<'_>,
) -> Result<(SocketAddr, &'m Workload), Rejection> {
    if req.method != "CONNECT" {
        return Err(bad_request(format!("method {} is not CONNECT", req.method)));
    }
    let authority = req.authority.ok_or_else(|| bad_request("CONNECT without authority"))?;
    let target: SocketAddr = authority
        .parse()
        .map_err(|_| bad_request(format!("authority {authority:?} is not ip:port")))?;
    if target.port() == 0 {
        return Err(bad_request(format!("authority {authority:?} has port 0")));
    }
    if SELF_CALL_PORTS.contains(&target.port()) {
        return Err(unavailable(format!("self-call to the proxy's own port {target}")));
    }
    let w = mesh.local_captured(node, target.ip()).ok_or_else(|| {
        bad_request(format!("target {} is not a captured pod of this node", target.ip()))
    })?;
    Ok((target, w))
}

/// Check a plaintext (15006) connection's original destination: not a self-call, and a captured
/// pod of this node.
pub fn check_plaintext<'m>(
    mesh: &'m MeshState,
    node: &str,
    dst: SocketAddr,
) -> Result<&'m Workload, Rejection> {
    if SELF_CALL_PORTS.contains(&dst.port()) {
        return Err(bad_request(format!("self-call to the proxy's own port {dst}")));
    }
    mesh.local_captured(node, dst.ip()).ok_or_else(|| {
        bad_request(format!("destination {} is not a captured pod of this node", dst.ip()))
    })
}

/// The `Forwarded` header value the source proxy sends: `for="ip:port"` (`[v6]:port` for IPv6).
pub fn forwarded_for(client: SocketAddr) -> String {
    format!("for=\"{client}\"")
}

/// Parse the first `for=` of a `Forwarded` header into the client's address.
pub fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    value.split([',', ';']).find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        v.parse::<SocketAddr>()
            .ok()
            .or_else(|| v.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::MeshSpec;

    fn mesh() -> MeshState {
        MeshState::new(MeshSpec {
            workloads: vec![
                Workload::new("server", "node-b", "10.0.2.5".parse().unwrap()),
                Workload::new("legacy", "node-b", "10.0.2.7".parse().unwrap()).uncaptured(),
                Workload::new("remote", "node-a", "10.0.1.5".parse().unwrap()),
            ],
            ..MeshSpec::default()
        })
        .unwrap()
    }

    #[test]
    fn connect_table() {
        let m = mesh();
        let cases: [(&str, Option<&str>, Result<&str, u16>); 9] = [
            ("CONNECT", Some("10.0.2.5:8080"), Ok("10.0.2.5:8080")),
            ("GET", Some("10.0.2.5:8080"), Err(400)),
            ("POST", Some("10.0.2.5:8080"), Err(400)),
            ("CONNECT", None, Err(400)),
            ("CONNECT", Some("server.default:8080"), Err(400)),
            ("CONNECT", Some("10.0.2.5"), Err(400)),
            ("CONNECT", Some("10.0.2.5:15008"), Err(503)), // self-call, as ztunnel answers
            ("CONNECT", Some("10.0.2.7:8080"), Err(400)),  // not captured
            ("CONNECT", Some("10.0.1.5:8080"), Err(400)),  // another node's pod
        ];
        for (method, authority, want) in cases {
            let got = check_connect(&m, "node-b", ConnectRequest { method, authority })
                .map(|(t, _)| t.to_string())
                .map_err(|r| r.status);
            assert_eq!(got, want.map(str::to_string), "{method} {authority:?}");
        }
    }

    #[test]
    fn plaintext_self_calls_and_foreign_targets_are_refused() {
        let m = mesh();
        assert!(check_plaintext(&m, "node-b", "10.0.2.5:8080".parse().unwrap()).is_ok());
        for p in SELF_CALL_PORTS {
            assert!(
                check_plaintext(&m, "node-b", SocketAddr::new("10.0.2.5".parse().unwrap(), p))
                    .is_err()
            );
        }
        assert!(check_plaintext(&m, "node-b", "10.0.1.5:8080".parse().unwrap()).is_err());
    }

    #[test]
    fn forwarded_round_trips() {
        let a: SocketAddr = "10.0.1.5:43210".parse().unwrap();
        assert_eq!(parse_forwarded_for(&forwarded_for(a)), Some(a));
        let v6: SocketAddr = "[fd00::5]:1234".parse().unwrap();
        assert_eq!(parse_forwarded_for(&forwarded_for(v6)), Some(v6));
        assert_eq!(
            parse_forwarded_for("proto=https; For=\"10.1.1.1:5\""),
            "10.1.1.1:5".parse().ok()
        );
        assert_eq!(parse_forwarded_for("by=x"), None);
    }
}
