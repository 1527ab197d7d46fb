//! A small TCP endpoint for the model executor: the part of a Linux TCP stack the differential
//! flows exercise, as a pure state machine — segments in, segments and application events out,
//! time passed in. The model kernel (`ambient_kernel`) has no sockets; this plays them.
//!
//! What it does the way Linux does (kernel 6.x), because it decides which packets netfilter sees:
//! - the handshake (SYN, SYN-ACK, ACK), a listener's request socket completing on any valid ACK
//!   (a data segment too), a RST answering an ACK to a listener;
//! - one segment per application write (the veth and lo devices take GSO packets, so netfilter
//!   sees a write as one packet whatever its size), acknowledged at once (quick-ACK mode at the
//!   start of a connection);
//! - a FIN received in ESTABLISHED switches to delayed ACKs (pingpong), so an application that
//!   answers with its own FIN at once sends one FIN+ACK instead of an ACK and a FIN;
//! - an abortive close (SO_LINGER 0) sends RST+ACK; a RST in SYN_SENT refuses the connect only
//!   when it acknowledges the SYN; a closing socket in SYN_SENT sends nothing;
//! - retransmission of the oldest unacknowledged segment: 1 s for SYN and SYN-ACK, 200 ms once
//!   a round trip was measured (`TCP_RTO_MIN`; loopback and veth round trips are negligible),
//!   doubling on each expiry.
//!
//! Not modelled (none changes a compared field of the suite's flows): windows, congestion
//! control, tail-loss probes, SACK, out-of-order queueing (an out-of-order segment is dropped and
//! answered with a duplicate ACK), TIME_WAIT reuse, syncookies.
//!
//! Sequence numbers are relative: each side's SYN is 0, its data bytes 1..=n, its FIN n + 1.

use std::collections::VecDeque;
use std::net::SocketAddrV4;
use std::time::Duration;

use ambient_kernel::TcpFlags;

/// Retransmission timeout of a SYN or SYN-ACK (`TCP_TIMEOUT_INIT`).
pub const RTO_SYN: Duration = Duration::from_secs(1);
/// Retransmission timeout once a round trip was measured (`TCP_RTO_MIN`).
pub const RTO_MIN: Duration = Duration::from_millis(200);
/// The delayed-ACK timer (`TCP_DELACK_MIN`).
pub const DELACK: Duration = Duration::from_millis(40);

/// The TCP header fields the executor carries next to a model packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Seg {
    /// Flags.
    pub flags: TcpFlags,
    /// Sequence number (relative).
    pub seq: u32,
    /// Acknowledgement number (relative), meaningful with ACK.
    pub ack: u32,
    /// Payload bytes.
    pub len: u32,
    /// Sent by the kernel's control socket (no timestamp option: a 40-byte RST).
    pub bare: bool,
    /// Whose bytes the payload is: the flow whose header it starts with (the executor's stand-in
    /// for the payload itself, which the model packet does not carry).
    pub flow: Option<u32>,
}

impl Seg {
    /// IP total length as Linux sends it: 20 + 20 + options (timestamps: 12; a SYN's MSS, SACK,
    /// timestamps and window scale: 20) + payload.
    pub fn wire_len(&self) -> u32 {
        if self.bare {
            40
        } else if self.flags.has(TcpFlags::SYN) {
            60
        } else {
            52 + self.len
        }
    }

    /// The RST the kernel sends for a segment no socket takes (`tcp_v4_send_reset`).
    pub fn reset_for(seg: &Seg) -> Option<Seg> {
        if seg.flags.has(TcpFlags::RST) {
            return None;
        }
        Some(if seg.flags.has(TcpFlags::ACK) {
            Seg { flags: TcpFlags::R, seq: seg.ack, ack: 0, len: 0, bare: true, flow: None }
        } else {
            let end = seg.seq
                + seg.len
                + u32::from(seg.flags.has(TcpFlags::SYN))
                + u32::from(seg.flags.has(TcpFlags::FIN));
            Seg { flags: TcpFlags::RA, seq: 0, ack: end, len: 0, bare: true, flow: None }
        })
    }

    fn end(&self) -> u32 {
        self.seq
            + self.len
            + u32::from(self.flags.has(TcpFlags::SYN))
            + u32::from(self.flags.has(TcpFlags::FIN))
    }
}

/// Socket states (Linux names), with SYN_RECV standing for a listener's request socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    SynSent,
    SynRecv,
    Established,
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    CloseWait,
    LastAck,
    Closed,
}

/// What the application learns from a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEvent {
    /// The connect completed.
    Connected,
    /// The connect was refused (a RST acknowledging the SYN).
    Refused,
    /// A request socket completed: the listener accepts it.
    Accepted,
    /// Payload bytes arrived in order.
    Data(u32),
    /// The peer's FIN arrived (reads see EOF).
    Eof,
    /// The connection was reset (reads fail with ECONNRESET).
    Reset,
}

/// Segments to send and events for the application.
#[derive(Debug, Default)]
pub struct Reaction {
    /// To send, in order.
    pub send: Vec<Seg>,
    /// For the application.
    pub events: Vec<AppEvent>,
}

/// One endpoint of a connection.
#[derive(Debug, Clone)]
pub struct Tcb {
    /// Local address.
    pub local: SocketAddrV4,
    /// Remote address.
    pub remote: SocketAddrV4,
    /// SO_MARK (0 for accepted sockets: they inherit the listener's).
    pub mark: u32,
    /// IP_TRANSPARENT (inherited from a transparent listener).
    pub transparent: bool,
    /// State.
    pub state: State,
    /// Payload bytes received in order (what the application can read).
    pub received: u32,
    /// The peer's FIN arrived.
    pub peer_fin: bool,
    /// The code of the last ICMP destination-unreachable error on a synchronised connection
    /// (`sk_err_soft`: ignored by reads and writes, but what SO_ERROR reports).
    pub soft_error: Option<u8>,
    /// Payload bytes written.
    written: u32,
    snd_una: u32,
    snd_nxt: u32,
    rcv_nxt: u32,
    /// Sequence number of our FIN, once sent.
    fin_seq: Option<u32>,
    /// Sent, not yet acknowledged, oldest first.
    outstanding: VecDeque<Seg>,
    rto: Duration,
    /// When the retransmission timer fires, and its generation (stale timer events are ignored).
    pub timer: Option<(Duration, u64)>,
    /// When a delayed ACK is due.
    pub delack: Option<(Duration, u64)>,
    generation: u64,
    pingpong: bool,
}

impl Tcb {
    fn new(local: SocketAddrV4, remote: SocketAddrV4, mark: u32, transparent: bool) -> Tcb {
        Tcb {
            local,
            remote,
            mark,
            transparent,
            state: State::Closed,
            received: 0,
            peer_fin: false,
            soft_error: None,
            written: 0,
            snd_una: 0,
            snd_nxt: 0,
            rcv_nxt: 0,
            fin_seq: None,
            outstanding: VecDeque::new(),
            rto: RTO_SYN,
            timer: None,
            delack: None,
            generation: 0,
            pingpong: false,
        }
    }

    /// A connecting socket; returns it and its SYN.
    pub fn connect(
        local: SocketAddrV4,
        remote: SocketAddrV4,
        mark: u32,
        now: Duration,
    ) -> (Tcb, Seg) {
        let mut t = Tcb::new(local, remote, mark, false);
        t.state = State::SynSent;
        let syn = Seg { flags: TcpFlags::S, seq: 0, ack: 0, len: 0, bare: false, flow: None };
        t.sent(syn, now);
        (t, syn)
    }

    /// A listener's request socket for `syn`; returns it and its SYN-ACK.
    pub fn request(
        local: SocketAddrV4,
        remote: SocketAddrV4,
        transparent: bool,
        syn: &Seg,
        now: Duration,
    ) -> (Tcb, Seg) {
        let mut t = Tcb::new(local, remote, 0, transparent);
        t.state = State::SynRecv;
        t.rcv_nxt = syn.seq + 1;
        let synack =
            Seg { flags: TcpFlags::SA, seq: 0, ack: t.rcv_nxt, len: 0, bare: false, flow: None };
        t.sent(synack, now);
        (t, synack)
    }

    /// Whether an ICMP error quoting a segment with sequence number `seq` concerns this socket
    /// (`tcp_v4_err`: `snd_una <= seq <= snd_nxt`). In SYN_SENT that is the SYN alone: the
    /// errors the suite provokes come back while `tcp_connect` is still sending the SYN (the
    /// namespaces process it synchronously, in the connecting thread's softirq) and has not yet
    /// advanced `snd_nxt` past it — an error about the SYN-ACK's reset (sequence ISN + 1) is
    /// ignored as out of window (kernel 6.18: `TcpExtOutOfWindowIcmps`).
    pub fn icmp_in_window(&self, seq: u32) -> bool {
        if self.state == State::SynSent {
            seq == 0
        } else {
            self.snd_una <= seq && seq <= self.snd_nxt
        }
    }

    /// Whether lookups still find this socket.
    pub fn is_open(&self) -> bool {
        self.state != State::Closed
    }

    fn arm(&mut self, at: Duration) {
        self.generation += 1;
        self.timer = Some((at, self.generation));
    }

    /// Records a sent segment that occupies sequence space and arms the timer.
    fn sent(&mut self, seg: Seg, now: Duration) {
        self.snd_nxt = self.snd_nxt.max(seg.end());
        self.outstanding.push_back(seg);
        if self.timer.is_none() {
            self.arm(now + self.rto);
        }
    }

    fn ack_seg(&mut self, flags: TcpFlags) -> Seg {
        self.delack = None;
        Seg { flags, seq: self.snd_nxt, ack: self.rcv_nxt, len: 0, bare: false, flow: None }
    }

    /// Everything up to `ack` (exclusive) is acknowledged.
    fn acked(&mut self, ack: u32, now: Duration) {
        if ack <= self.snd_una || ack > self.snd_nxt {
            return;
        }
        self.snd_una = ack;
        while self.outstanding.front().is_some_and(|s| s.end() <= ack) {
            self.outstanding.pop_front();
        }
        self.rto = RTO_MIN;
        self.timer = None;
        if !self.outstanding.is_empty() {
            self.arm(now + self.rto);
        }
        if self.fin_seq.is_some_and(|f| ack > f) {
            self.state = match self.state {
                State::FinWait1 => State::FinWait2,
                State::Closing => State::TimeWait,
                State::LastAck => State::Closed,
                other => other,
            };
        }
    }

    /// Processes one arriving segment.
    pub fn segment(&mut self, seg: &Seg, now: Duration) -> Reaction {
        let mut r = Reaction::default();
        let f = seg.flags;
        if f.has(TcpFlags::RST) {
            match self.state {
                State::SynSent => {
                    if f.has(TcpFlags::ACK) && seg.ack == 1 {
                        self.state = State::Closed;
                        r.events.push(AppEvent::Refused);
                    }
                }
                State::SynRecv | State::TimeWait => self.state = State::Closed,
                State::Closed => {}
                _ => {
                    self.state = State::Closed;
                    r.events.push(AppEvent::Reset);
                }
            }
            if self.state == State::Closed {
                self.timer = None;
                self.delack = None;
            }
            return r;
        }
        match self.state {
            State::Closed => return r,
            State::SynSent => {
                if f.has(TcpFlags::SYN) && f.has(TcpFlags::ACK) && seg.ack == 1 {
                    self.rcv_nxt = seg.seq + 1;
                    self.acked(1, now);
                    self.state = State::Established;
                    r.send.push(self.ack_seg(TcpFlags::A));
                    r.events.push(AppEvent::Connected);
                } else if f.has(TcpFlags::ACK) && !f.has(TcpFlags::SYN) {
                    r.send.extend(Seg::reset_for(seg));
                }
                return r;
            }
            State::SynRecv if f.has(TcpFlags::SYN) && !f.has(TcpFlags::ACK) => {
                // A retransmitted SYN: the SYN-ACK again.
                r.send.push(Seg {
                    flags: TcpFlags::SA,
                    seq: 0,
                    ack: self.rcv_nxt,
                    len: 0,
                    bare: false,
                    flow: None,
                });
                return r;
            }
            _ if f.has(TcpFlags::SYN) => {
                // A SYN on a synchronised connection gets a challenge ACK.
                r.send.push(self.ack_seg(TcpFlags::A));
                return r;
            }
            _ => {}
        }
        if !f.has(TcpFlags::ACK) {
            return r;
        }
        if self.state == State::SynRecv {
            if seg.ack != 1 {
                r.send.extend(Seg::reset_for(seg));
                return r;
            }
            self.acked(1, now);
            self.state = State::Established;
            r.events.push(AppEvent::Accepted);
        } else {
            self.acked(seg.ack, now);
        }
        let receiving =
            matches!(self.state, State::Established | State::FinWait1 | State::FinWait2);
        let mut ack_now = false;
        if seg.len > 0 {
            if receiving && seg.seq == self.rcv_nxt {
                self.rcv_nxt += seg.len;
                self.received += seg.len;
                r.events.push(AppEvent::Data(seg.len));
                ack_now = true;
            } else {
                // A duplicate or out-of-order segment: a duplicate ACK.
                ack_now = true;
            }
        }
        if f.has(TcpFlags::FIN) {
            if receiving && seg.seq + seg.len == self.rcv_nxt && !self.peer_fin {
                self.rcv_nxt += 1;
                self.peer_fin = true;
                r.events.push(AppEvent::Eof);
                match self.state {
                    State::Established => {
                        self.state = State::CloseWait;
                        self.pingpong = true;
                        ack_now = false;
                        self.generation += 1;
                        self.delack = Some((now + DELACK, self.generation));
                    }
                    State::FinWait1 => {
                        let ours_acked = self.fin_seq.is_some_and(|fin| self.snd_una > fin);
                        self.state = if ours_acked { State::TimeWait } else { State::Closing };
                        ack_now = true;
                    }
                    _ => {
                        self.state = State::TimeWait;
                        ack_now = true;
                    }
                }
            } else {
                ack_now = true;
            }
        }
        if ack_now {
            r.send.push(self.ack_seg(TcpFlags::A));
        }
        r
    }

    /// The application writes `len` bytes; the segment to send, if the state allows sending.
    pub fn write(&mut self, len: u32, flow: u32, now: Duration) -> Option<Seg> {
        if len == 0 || !matches!(self.state, State::Established | State::CloseWait) {
            return None;
        }
        let seg = Seg {
            flags: TcpFlags::PA,
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            len,
            bare: false,
            flow: Some(flow),
        };
        self.written += len;
        self.delack = None;
        self.sent(seg, now);
        Some(seg)
    }

    /// `shutdown(SHUT_WR)`: the FIN to send; `Err` is the errno name.
    pub fn shutdown(&mut self, now: Duration) -> Result<Option<Seg>, &'static str> {
        let next = match self.state {
            State::Closed => return Err("ENOTCONN"),
            State::Established => State::FinWait1,
            State::CloseWait => State::LastAck,
            _ => return Ok(None),
        };
        self.state = next;
        let fin = Seg {
            flags: TcpFlags::FA,
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            len: 0,
            bare: false,
            flow: None,
        };
        self.fin_seq = Some(fin.seq);
        self.delack = None;
        self.sent(fin, now);
        Ok(Some(fin))
    }

    /// `close()` with SO_LINGER 0: the RST to send, if the state calls for one.
    pub fn abort(&mut self) -> Option<Seg> {
        let reset = matches!(
            self.state,
            State::Established
                | State::CloseWait
                | State::FinWait1
                | State::FinWait2
                | State::SynRecv
        ) || (matches!(self.state, State::Closing | State::LastAck)
            && self.snd_nxt != self.snd_una);
        self.state = State::Closed;
        self.timer = None;
        self.delack = None;
        reset.then_some(Seg {
            flags: TcpFlags::RA,
            seq: self.snd_nxt,
            ack: self.rcv_nxt,
            len: 0,
            bare: false,
            flow: None,
        })
    }

    /// The socket goes away without sending anything (a hard ICMP error in SYN_SENT).
    pub fn discard(&mut self) {
        self.state = State::Closed;
        self.timer = None;
        self.delack = None;
    }

    /// `close()`: a FIN where one is still due; a connecting socket just goes away.
    pub fn close(&mut self, now: Duration) -> Option<Seg> {
        match self.state {
            State::SynSent => {
                self.state = State::Closed;
                self.timer = None;
                None
            }
            State::Established | State::CloseWait => self.shutdown(now).ok().flatten(),
            _ => None,
        }
    }

    /// The retransmission timer fired (generation `generation`): the segment to send again.
    pub fn timer_fired(&mut self, generation: u64, now: Duration) -> Option<Seg> {
        if self.timer.map(|(_, g)| g) != Some(generation) || !self.is_open() {
            return None;
        }
        self.timer = None;
        let mut seg = *self.outstanding.front()?;
        if seg.flags.has(TcpFlags::ACK) {
            seg.ack = self.rcv_nxt;
        }
        self.rto *= 2;
        self.arm(now + self.rto);
        Some(seg)
    }

    /// The delayed-ACK timer fired: the ACK, if still owed.
    pub fn delack_fired(&mut self, generation: u64) -> Option<Seg> {
        if self.delack.map(|(_, g)| g) != Some(generation) || !self.is_open() {
            return None;
        }
        Some(self.ack_seg(TcpFlags::A))
    }
}
