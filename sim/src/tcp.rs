//! TCP retransmission, owned by the harness.
//!
//! turmoil-net retransmits after a number of egress passes; in a simulator that runs as many
//! passes as it likes at one instant, that would make a dropped segment fatal in zero time.
//! So its own retransmission is switched off (`retx_threshold` = ∞) and the harness keeps, per
//! substrate socket, the segments it sent that are not yet acknowledged and resends them on
//! Linux's timers, in simulated time:
//!
//! - RTO 1 s for a SYN or SYN-ACK (`TCP_TIMEOUT_INIT`), 200 ms for data (`TCP_RTO_MIN`; the
//!   simulated round trip is far below it), doubling per retransmission up to 120 s;
//! - give up after 6 SYN retransmissions (`tcp_syn_retries`), 5 SYN-ACK
//!   (`tcp_synack_retries`) or 15 data (`tcp_retries2`) and fail the socket with `ETIMEDOUT`;
//! - go-back-N: every unacknowledged segment is resent in order (turmoil-net's receiver takes
//!   only in-order segments);
//! - a segment that arrives entirely below what the receiver already acknowledged gets a
//!   duplicate ACK, as the kernel sends one; without it a lost ACK would never be repaired.
//!
//! Window updates are the harness's too. turmoil-net advertises a reopened window only when one
//! read drains half its receive buffer; a reader taking less at a time (a proxy's 16 KiB
//! copy buffer) would leave a sender that filled the window waiting forever, as nothing else
//! tells it the window opened (no zero-window probes either). So after a socket's owner reads,
//! the harness sends the ACK Linux's `tcp_cleanup_rbuf` sends: when the window last advertised
//! is at most half the buffer and the free space now is at least twice it
//! ([`window_update`]).
//!
//! Not modelled: fast retransmit, SACK, RTT estimation, zero-window probes, keepalive probes.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use turmoil_net::TcpSegment;

use crate::substrate::SockKey;

const RTO_SYN: Duration = Duration::from_secs(1);
const RTO_DATA: Duration = Duration::from_millis(200);
const RTO_MAX: Duration = Duration::from_secs(120);
const SYN_RETRIES: u32 = 6;
const SYNACK_RETRIES: u32 = 5;
const DATA_RETRIES: u32 = 15;

/// The substrate's receive buffer (`KernelConfig::recv_buf_cap`, set to this in `backend.rs`).
pub const RECV_BUF: usize = 64 * 1024;

/// The window a socket should advertise in a window update after its owner read, if it should
/// send one: its last advertised window was `advertised`, `unread()` bytes wait in its buffer
/// (asked only when it matters: it snapshots the host's sockets).
/// Linux's rule (`tcp_cleanup_rbuf`): only once the advertised window has fallen to at most
/// half the buffer, and only if the new window is at least twice it ("freed lots of space").
pub fn window_update(advertised: u16, unread: impl FnOnce() -> usize) -> Option<u16> {
    let now = usize::from(advertised);
    if 2 * now > RECV_BUF {
        return None;
    }
    let free = RECV_BUF.saturating_sub(unread()).min(usize::from(u16::MAX));
    (free > 0 && free >= 2 * now).then_some(free as u16)
}

/// Sequence-space comparison (RFC 1982).
pub fn seq_le(a: u32, b: u32) -> bool {
    (b.wrapping_sub(a) as i32) >= 0
}

/// How much sequence space a segment takes.
pub fn seq_len(seg: &TcpSegment) -> u32 {
    seg.payload.len() as u32 + u32::from(seg.flags.syn) + u32::from(seg.flags.fin)
}

#[derive(Debug, Clone)]
struct Unacked {
    end: u32,
    seg: TcpSegment,
}

#[derive(Debug, Clone)]
struct Flight {
    segs: VecDeque<Unacked>,
    rto: Duration,
    deadline: Duration,
    retries: u32,
    max_retries: u32,
}

/// What a retransmission timer decided.
#[derive(Debug)]
pub enum Expiry {
    /// Resend these segments (in order) from the socket.
    Resend(SockKey, Vec<TcpSegment>),
    /// Out of retries: the socket fails with ETIMEDOUT.
    GiveUp(SockKey),
}

/// Every socket's unacknowledged segments.
#[derive(Debug, Default)]
pub struct Flights {
    map: BTreeMap<SockKey, Flight>,
}

impl Flights {
    /// A socket sent `seg` (not a retransmission).
    pub fn sent(&mut self, key: SockKey, seg: &TcpSegment, now: Duration) {
        if seg.flags.rst {
            self.map.remove(&key);
            return;
        }
        let len = seq_len(seg);
        if len == 0 {
            return;
        }
        let (rto, max_retries) = match (seg.flags.syn, seg.flags.ack) {
            (true, false) => (RTO_SYN, SYN_RETRIES),
            (true, true) => (RTO_SYN, SYNACK_RETRIES),
            _ => (RTO_DATA, DATA_RETRIES),
        };
        let f = self.map.entry(key).or_insert_with(|| Flight {
            segs: VecDeque::new(),
            rto,
            deadline: now + rto,
            retries: 0,
            max_retries,
        });
        if f.segs.is_empty() {
            f.rto = rto;
            f.max_retries = max_retries;
            f.deadline = now + rto;
            f.retries = 0;
        }
        let end = seg.seq.wrapping_add(len);
        // The payload is shared with the segment sent, not copied.
        f.segs.push_back(Unacked { end, seg: seg.clone() });
    }

    /// A segment reached `key` (the receiving socket): its ACK acknowledges `key`'s segments,
    /// a RST ends them.
    pub fn received(&mut self, key: &SockKey, seg: &TcpSegment, now: Duration) {
        if seg.flags.rst {
            self.map.remove(key);
            return;
        }
        if !seg.flags.ack {
            return;
        }
        let Some(f) = self.map.get_mut(key) else { return };
        let before = f.segs.len();
        while f.segs.front().is_some_and(|u| seq_le(u.end, seg.ack)) {
            f.segs.pop_front();
        }
        if f.segs.is_empty() {
            self.map.remove(key);
        } else if f.segs.len() != before {
            f.retries = 0;
            f.rto =
                if f.segs.front().is_some_and(|u| u.seg.flags.syn) { RTO_SYN } else { RTO_DATA };
            f.deadline = now + f.rto;
        }
    }

    /// Forget a socket (it was reset, or the harness failed it).
    pub fn forget(&mut self, key: &SockKey) {
        self.map.remove(key);
    }

    /// The earliest retransmission deadline.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.map.values().map(|f| f.deadline).min()
    }

    /// Timers due at `now`, in socket order.
    pub fn expire(&mut self, now: Duration) -> Vec<Expiry> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (key, f) in &mut self.map {
            if f.deadline > now {
                continue;
            }
            if f.retries >= f.max_retries {
                gone.push(*key);
                out.push(Expiry::GiveUp(*key));
                continue;
            }
            f.retries += 1;
            f.rto = (f.rto * 2).min(RTO_MAX);
            f.deadline = now + f.rto;
            out.push(Expiry::Resend(*key, f.segs.iter().map(|u| u.seg.clone()).collect()));
        }
        for k in gone {
            self.map.remove(&k);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use bytes::Bytes;
    use turmoil_net::TcpFlags;

    use super::*;
    use crate::topology::NetnsId;

    #[test]
    fn window_update_follows_linux_rule() {
        // A closed window that a read reopened: update with the free space.
        assert_eq!(window_update(0, || 49_152), Some(16_384));
        assert_eq!(window_update(0, || 0), Some(65_535));
        // Nothing read yet: no update for a window still shut.
        assert_eq!(window_update(0, || RECV_BUF), None);
        // A small window that did not at least double: none.
        assert_eq!(window_update(20_000, || 30_000), None);
        assert_eq!(window_update(20_000, || 20_000), Some(45_536));
        // The advertised window is still more than half the buffer: none.
        assert_eq!(window_update(40_000, || 0), None);
    }

    fn seg(seq: u32, ack: u32, flags: TcpFlags, len: usize) -> TcpSegment {
        TcpSegment {
            src_port: 1,
            dst_port: 2,
            seq,
            ack,
            flags,
            window: 100,
            payload: Bytes::from(vec![7u8; len]),
        }
    }

    fn key() -> SockKey {
        (NetnsId(0), 49152, SocketAddrV4::new([10, 0, 0, 1].into(), 80))
    }

    #[test]
    fn data_is_resent_with_backoff_until_acknowledged() {
        let mut f = Flights::default();
        let ack = TcpFlags { ack: true, ..TcpFlags::default() };
        f.sent(key(), &seg(100, 0, ack, 10), Duration::ZERO);
        f.sent(key(), &seg(110, 0, ack, 10), Duration::ZERO);
        assert_eq!(f.next_deadline(), Some(RTO_DATA));
        assert!(f.expire(Duration::from_millis(199)).is_empty());
        match f.expire(RTO_DATA).as_slice() {
            [Expiry::Resend(_, segs)] => assert_eq!(segs.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.next_deadline(), Some(RTO_DATA * 3), "doubled");
        // A partial ACK drops the first and restarts the timer.
        f.received(&key(), &seg(0, 110, ack, 0), Duration::from_secs(1));
        assert_eq!(f.next_deadline(), Some(Duration::from_secs(1) + RTO_DATA));
        f.received(&key(), &seg(0, 120, ack, 0), Duration::from_secs(1));
        assert_eq!(f.next_deadline(), None);
    }

    #[test]
    fn a_syn_gives_up_after_six_retries_and_wraparound_is_handled() {
        let mut f = Flights::default();
        let syn = TcpFlags { syn: true, ..TcpFlags::default() };
        f.sent(key(), &seg(u32::MAX, 0, syn, 0), Duration::ZERO);
        let mut resends = 0;
        let t = loop {
            let t = f.next_deadline().unwrap();
            match f.expire(t).pop().unwrap() {
                Expiry::Resend(..) => resends += 1,
                Expiry::GiveUp(_) => break t,
            }
        };
        assert_eq!(resends, 6);
        assert_eq!(t, Duration::from_secs(127), "1+2+4+8+16+32+64");
        assert!(seq_le(u32::MAX, 0) && !seq_le(0, u32::MAX));
    }
}
