//! The last step of the packet loop: what the kernel delivered locally reaches its substrate
//! socket (from the alias of its source when that is a loopback address); a SYN nothing
//! listens for (the port unbound, or bound to another address), a segment for a socket that
//! is not there (never was, or closed by a reset), and anything that reaches a namespace
//! without sockets, get the kernel's reset (from no socket: no mark); ICMP errors fail sockets that are
//! still connecting; a segment already acknowledged gets a duplicate ACK. Datagrams: `udp.rs`.

use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

use bytes::Bytes;
use turmoil_net::{EnterGuard, Packet as SubPacket, TcpFlags as SubFlags, TcpSegment, Transport};

use super::{Cx, Fabric, Wire, errno, to_sub_flags};
use crate::tcp;
use crate::topology::NetnsId;
use ambient_kernel::{self as kernel, Packet, Protocol, SocketInfo, TcpFlags};

/// Aborts a substrate socket without any packet on the wire: a RST only its host sees.
pub(super) fn abort_in_place(guard: &EnterGuard, host: Ipv4Addr, port: u16, remote: SocketAddrV4) {
    guard.deliver(SubPacket {
        src: IpAddr::V4(*remote.ip()),
        dst: IpAddr::V4(host),
        ttl: 64,
        payload: Transport::Tcp(TcpSegment {
            src_port: remote.port(),
            dst_port: port,
            seq: 0,
            ack: 0,
            flags: SubFlags { rst: true, ..SubFlags::default() },
            window: 0,
            payload: Bytes::new(),
        }),
    });
}

impl Fabric {
    /// The model delivered `pkt` to the local stack of `netns`.
    pub(super) fn local(&mut self, cx: &Cx<'_>, netns: NetnsId, pkt: Packet, wire: Wire) {
        match pkt.proto {
            Protocol::Tcp => {}
            Protocol::Icmp => return self.icmp(cx, netns, &pkt),
            Protocol::Udp => return self.deliver_udp(cx, netns, pkt, wire),
        }
        let Some(host) = self.topo.slot(netns).host else {
            // No sockets here (a node): the kernel answers with a reset.
            return self.kernel_reset(cx, netns, &pkt, &wire);
        };
        let local = pkt.dst_sock();
        let remote = pkt.src_sock();
        let flags = to_sub_flags(pkt.tcp_flags);
        let syn = flags.syn && !flags.ack;
        let Some(key) = self.sockets.deliver_to(netns, local, remote, syn) else {
            // No socket takes it (nothing listens on the address and port; the socket is
            // closed): the kernel's reset.
            return self.kernel_reset(cx, netns, &pkt, &wire);
        };
        let (_, port, sub_remote) = key;
        let seg = TcpSegment {
            src_port: remote.port(),
            dst_port: port,
            seq: wire.seq,
            ack: wire.ack,
            flags,
            window: wire.window,
            payload: wire.payload,
        };
        if !seg.payload.is_empty()
            && self.sockets.is_released(&key)
            && dup_below(&self.sockets, &key, &seg).is_none()
        {
            return self.abort_on_data(cx, netns, &pkt, seg.ack, key, host.addr);
        }
        self.flights.received(&key, &seg, cx.now);
        if flags.syn && flags.ack {
            self.sockets.established(&key);
        }
        if flags.rst {
            self.sockets.close(key);
        }
        // A segment entirely below what this socket already acknowledged: the kernel would
        // answer with a duplicate ACK (the sender's ACK may have been lost).
        let dup = dup_below(&self.sockets, &key, &seg);
        let sub = SubPacket {
            src: IpAddr::V4(*sub_remote.ip()),
            dst: IpAddr::V4(host.addr),
            ttl: 64,
            payload: Transport::Tcp(seg),
        };
        if flags.rst && super::unread(host.addr, &key) > 0 {
            // Data the owner has not read yet comes before the reset's error (see
            // `Fabric::deliver_deferred_resets`).
            self.deferred_resets.insert(key, (host.addr, sub));
            return;
        }
        cx.guard.deliver(sub);
        if let Some((seq, ack, window)) = dup {
            let p = SubPacket {
                src: IpAddr::V4(host.addr),
                dst: IpAddr::V4(*sub_remote.ip()),
                ttl: 64,
                payload: Transport::Tcp(TcpSegment {
                    src_port: port,
                    dst_port: remote.port(),
                    seq,
                    ack,
                    flags: SubFlags { ack: true, ..SubFlags::default() },
                    window,
                    payload: Bytes::new(),
                }),
            };
            self.egressed(cx, p, true);
        }
    }

    /// New data for a socket its owner has closed: Linux aborts the socket and answers with a
    /// reset from it (tcp_rcv_state_process in FIN_WAIT1/2 with RCV_SHUTDOWN, counted as
    /// TCPAbortOnData), sent by the control socket with the socket's mark
    /// (tcp_v4_send_reset). No TIME_WAIT follows: conntrack sees the reset and goes to CLOSE.
    fn abort_on_data(
        &mut self,
        cx: &Cx<'_>,
        netns: NetnsId,
        pkt: &Packet,
        ack: u32,
        key: crate::substrate::SockKey,
        host: Ipv4Addr,
    ) {
        let mark = self.sockets.view(&key).map_or(0, |v| v.info.mark);
        self.flights.forget(&key);
        self.forget_deferred_reset(&key);
        abort_in_place(cx.guard, host, key.1, key.2);
        self.sockets.close(key);
        cx.note(format!(
            "{} abort on data: socket {} closed by its owner got new data",
            self.topo.slot(netns).label,
            pkt.dst_sock()
        ));
        let flags = if pkt.tcp_flags.has(TcpFlags::ACK) { TcpFlags::R } else { TcpFlags::RA };
        let rst =
            Packet { mark, ..Packet::tcp(pkt.dst_sock(), pkt.src_sock(), flags).with_len(40) };
        let w = Wire { seq: ack, ..Wire::default() };
        self.output(cx, netns, rst, Some(SocketInfo { mark, ..SocketInfo::kernel() }), w);
    }

    /// The kernel's answer to a segment no socket takes: a reset from its control socket
    /// (none to a reset), through the output path.
    fn kernel_reset(&mut self, cx: &Cx<'_>, netns: NetnsId, pkt: &Packet, wire: &Wire) {
        if pkt.tcp_flags.has(TcpFlags::RST) {
            return;
        }
        let flags = if pkt.tcp_flags.has(TcpFlags::ACK) { TcpFlags::R } else { TcpFlags::RA };
        let rst = Packet::tcp(pkt.dst_sock(), pkt.src_sock(), flags).with_len(40);
        let len = wire.payload.len() as u32
            + u32::from(pkt.tcp_flags.has(TcpFlags::SYN))
            + u32::from(pkt.tcp_flags.has(TcpFlags::FIN));
        let w = Wire { seq: wire.ack, ack: wire.seq.wrapping_add(len), ..Wire::default() };
        self.output(cx, netns, rst, Some(SocketInfo::kernel()), w);
    }

    /// An ICMP error reached a namespace: a socket still connecting fails with the errno
    /// Linux maps it to (`icmp_err_convert`); an established one ignores it (a soft error).
    fn icmp(&mut self, cx: &Cx<'_>, netns: NetnsId, pkt: &Packet) {
        let Some(icmp) = pkt.icmp else { return };
        let Some(inner) = icmp.inner else { return };
        if icmp.kind != kernel::packet::icmp_type::DEST_UNREACH {
            return;
        }
        match inner.proto {
            Protocol::Tcp => {}
            Protocol::Udp => return self.udp_icmp(cx, netns, icmp.code, inner),
            Protocol::Icmp => return,
        }
        let local = SocketAddrV4::new(inner.src, inner.sport);
        let remote = SocketAddrV4::new(inner.dst, inner.dport);
        let Some(key) = self.sockets.by_view(netns, local, remote) else { return };
        if !self.sockets.is_handshaking(&key) {
            return;
        }
        let err = match icmp.code {
            0 | 6 | 9 | 11 => errno::ENETUNREACH,
            3 => errno::ECONNREFUSED,
            4 => return,
            _ => errno::EHOSTUNREACH,
        };
        self.fail(cx, key, err, &format!("ICMP destination unreachable code {}", icmp.code));
    }
}

/// For a segment entirely below what the socket already acknowledged (a retransmission):
/// what the duplicate ACK the kernel answers with carries (seq, ack, window).
fn dup_below(
    sockets: &crate::substrate::Sockets,
    key: &crate::substrate::SockKey,
    seg: &TcpSegment,
) -> Option<(u32, u32, u16)> {
    let len = tcp::seq_len(seg);
    match sockets.view(key) {
        Some(v) if len > 0 && !seg.flags.syn && !seg.flags.rst => v
            .rcv_ack
            .filter(|&acked| tcp::seq_le(seg.seq.wrapping_add(len), acked))
            .map(|acked| (v.snd_nxt, acked, v.window)),
        _ => None,
    }
}
