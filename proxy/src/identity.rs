//! SPIFFE workload identities: `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
//!
//! This is the identity a workload certificate carries in its URI SAN, the one HBONE peers verify,
//! and the one authorization policies match (as a *principal*, written without `spiffe://`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A workload's SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Self {
        Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        }
    }

    /// The identity as an authorization principal: the URI without `spiffe://`.
    pub fn principal(&self) -> String {
        format!("{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.principal())
    }
}

/// Why a string is not a workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a workload identity ({why}); expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
)]
pub struct IdentityParseError {
    pub input: String,
    pub why: &'static str,
}

/// A DNS-label-like name: what trust domains, namespaces and service accounts are made of.
pub fn valid_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

impl FromStr for Identity {
    type Err = IdentityParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| IdentityParseError { input: s.to_string(), why };
        let rest = s.strip_prefix("spiffe://").ok_or_else(|| err("missing spiffe:// scheme"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => {
                for part in [td, ns, sa] {
                    if !valid_name_part(part) {
                        return Err(err("empty or invalid path segment"));
                    }
                }
                Ok(Identity::new(*td, *ns, *sa))
            }
            _ => Err(err("wrong path shape")),
        }
    }
}

impl Serialize for Identity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_shapes() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/sleep".parse().unwrap();
        assert_eq!(id, Identity::new("cluster.local", "default", "sleep"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(id.principal(), "cluster.local/ns/default/sa/sleep");
        for bad in [
            "cluster.local/ns/default/sa/sleep",
            "spiffe://cluster.local/ns/default",
            "spiffe://cluster.local/ns//sa/x",
            "spiffe://cluster.local/sa/default/ns/x",
            "spiffe://td/ns/a/sa/b/extra",
        ] {
            assert!(bad.parse::<Identity>().is_err(), "{bad}");
        }
    }
}
