//! Real ztunnel as a node proxy of the netns backend.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`zds`] | the ZDS messages as bytes, hand-encoded from the protocol's field numbers (pure) |
//! | [`agent`] | the node agent's end of ZDS: a `SOCK_SEQPACKET` server, adds with the pod's netns fd |
//! | [`config`] | the mesh as ztunnel's `LOCAL_XDS_PATH` file: workloads, services, policies as istiod would send them (pure) |
pub mod agent;
pub mod config;
pub mod zds;
