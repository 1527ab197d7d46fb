//! DNS: the proxy's DNS proxy on 15053 in every captured pod (ztunnel-like). Split like the
//! rest of the crate: the wire format ([`wire`]) and the decision ([`decide`](mod@decide)) are pure and
//! tested without a runtime; the sockets are the node's (`node::dns`, on the `Network` seam).

pub mod decide;
pub mod wire;

pub use decide::{Decision, decide};
pub use wire::{Message, Name, Rcode, Record};
