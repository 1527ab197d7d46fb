//! UDP in the packet loop. A datagram a substrate host emits goes through its namespace's
//! model as the sending socket's view (`crate::udp`: bound address, or the route's source for
//! a wildcard socket; its SO_MARK); one the model delivers locally reaches the socket bound to
//! its destination, or — none takes it — gets the kernel's ICMP port unreachable, which the
//! model relates to the datagram's connection (its NAT undone) and sends back; an ICMP error
//! about a datagram becomes the pending error of the connected socket that sent it.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use turmoil_net::{Packet as SubPacket, Transport, UdpDatagram};

use super::{Cx, Fabric, Wire, errno};
use crate::substrate::{substrate_addr, view_addr};
use crate::topology::NetnsId;
use ambient_kernel::packet::Tuple;
use ambient_kernel::{Packet, SocketInfo};

/// The error a connected UDP socket reports for ICMP destination unreachable `code`, when the
/// kernel reports one at all: `__udp4_lib_err` without IP_RECVERR sets `sk_err` only for the
/// codes `icmp_err_convert` calls fatal (a router's net/host unreachable is not).
pub fn udp_icmp_errno(code: u8) -> Option<i32> {
    const ENOPROTOOPT: i32 = 92;
    const EHOSTDOWN: i32 = 112;
    const ENONET: i32 = 64;
    match code {
        2 => Some(ENOPROTOOPT),
        3 => Some(errno::ECONNREFUSED),
        6 | 9 => Some(errno::ENETUNREACH),
        7 => Some(EHOSTDOWN),
        8 => Some(ENONET),
        10 | 13..=15 => Some(errno::EHOSTUNREACH),
        _ => None,
    }
}

impl Fabric {
    /// A datagram the host of `src` emitted towards the substrate address `dst`.
    pub(super) fn egressed_udp(
        &mut self,
        cx: &Cx<'_>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        d: UdpDatagram,
    ) {
        let Some(&netns) = self.topo.by_host_addr.get(&src) else { return };
        let remote = view_addr(SocketAddrV4::new(dst, d.dst_port));
        let Some(view) = self.sockets.udp.view(netns, d.src_port).cloned() else {
            self.stats.drops += 1;
            cx.note(format!(
                "{} substrate: no UDP socket on port {} > {remote}; datagram dropped",
                self.topo.slot(netns).label,
                d.src_port
            ));
            return;
        };
        let ip = if view.bound.ip().is_unspecified() {
            match self.topo.slot(netns).model.source_for(*remote.ip(), view.info.mark) {
                Ok(ip) => ip,
                Err(e) => {
                    self.stats.drops += 1;
                    cx.note(format!(
                        "{} udp port {} > {remote}: no route ({e}); datagram dropped",
                        self.topo.slot(netns).label,
                        d.src_port
                    ));
                    return;
                }
            }
        } else {
            *view.bound.ip()
        };
        let len = d.payload.len() as u32;
        let local = SocketAddrV4::new(ip, d.src_port);
        let pkt = Packet::udp(local, remote).with_len(28 + len).with_payload(len);
        let pkt = Packet { mark: view.info.mark, ..pkt };
        let wire = Wire { payload: d.payload, ..Wire::default() };
        self.output(cx, netns, pkt, Some(view.info), wire);
    }

    /// The model delivered a datagram to the local stack of `netns`.
    pub(super) fn deliver_udp(&mut self, cx: &Cx<'_>, netns: NetnsId, pkt: Packet, wire: Wire) {
        let (local, remote) = (pkt.dst_sock(), pkt.src_sock());
        let host = self.topo.slot(netns).host;
        let taker = host.filter(|_| self.sockets.udp.deliver_to(netns, local, remote).is_some());
        let Some(host) = taker else {
            return self.port_unreachable(cx, netns, &pkt);
        };
        let from = substrate_addr(remote);
        cx.guard.deliver(SubPacket {
            src: IpAddr::V4(*from.ip()),
            dst: IpAddr::V4(host.addr),
            ttl: 64,
            payload: Transport::Udp(UdpDatagram {
                src_port: from.port(),
                dst_port: local.port(),
                payload: wire.payload,
            }),
        });
    }

    /// No socket took a datagram: the kernel's ICMP port unreachable, through the output path.
    fn port_unreachable(&mut self, cx: &Cx<'_>, netns: NetnsId, pkt: &Packet) {
        let Some(icmp) = self.topo.slot(netns).model.port_unreachable(pkt) else { return };
        if self.tracing {
            cx.note(format!(
                "{} no socket for {} > {}: port unreachable",
                self.topo.slot(netns).label,
                pkt.src_sock(),
                pkt.dst_sock()
            ));
        }
        self.output(cx, netns, icmp, Some(SocketInfo::kernel()), Wire::default());
    }

    /// ICMP destination unreachable `code` about a datagram `inner` reached `netns`: the
    /// connected socket that sent it reports the error, if the kernel reports it.
    pub(super) fn udp_icmp(&mut self, cx: &Cx<'_>, netns: NetnsId, code: u8, inner: Tuple) {
        let Some(err) = udp_icmp_errno(code) else { return };
        let local = SocketAddrV4::new(inner.src, inner.sport);
        let remote = SocketAddrV4::new(inner.dst, inner.dport);
        let Some(waker) = self.sockets.udp.icmp_error(netns, local, remote, err) else {
            return;
        };
        if self.tracing {
            cx.note(format!(
                "{} udp socket {local} > {remote} gets errno {err} (ICMP code {code})",
                self.topo.slot(netns).label
            ));
        }
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fatal_icmp_codes_fail_a_connected_udp_socket() {
        assert_eq!(udp_icmp_errno(3), Some(111), "port unreachable: ECONNREFUSED");
        assert_eq!(udp_icmp_errno(0), None, "net unreachable is soft");
        assert_eq!(udp_icmp_errno(1), None, "host unreachable is soft");
        assert_eq!(udp_icmp_errno(4), None, "fragmentation needed");
        assert_eq!(udp_icmp_errno(13), Some(113), "administratively prohibited");
        assert_eq!(udp_icmp_errno(16), None);
    }
}
