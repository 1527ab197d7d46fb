//! The TCP conntrack state machine (nf_conntrack_proto_tcp, kernel 6.x), without window tracking.
//!
//! States, the transition table indexed by (direction, flag class, state), the default timeouts,
//! the "ignore" handling, reopening from TIME_WAIT/CLOSE, simultaneous open, the RFC 5961
//! challenge-ACK case in LAST_ACK, loose pick-up of mid-stream connections, deleting a
//! connection whose only reply is a RST, not renewing the timeout on SYN retransmits, the
//! 5-minute cap while data is unacknowledged, and ASSURED all follow the kernel
//! (checked segment by segment against kernel 6.18, `tests/data/kernel-runs/tcp-states.*`).
//! Not modelled: sequence numbers and windows — `tcp_in_window` always accepts, an ACK is taken
//! to acknowledge everything the other side sent, and where the kernel compares an ACK with a
//! recorded sequence number the model assumes they agree — and so the retransmission count
//! (3 identical segments cap the timeout at 5 minutes) is not kept.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Conntrack's TCP states, serialised (and parsed) as `conntrack -L` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    None = 0,
    SynSent = 1,
    SynRecv = 2,
    Established = 3,
    FinWait = 4,
    CloseWait = 5,
    LastAck = 6,
    TimeWait = 7,
    Close = 8,
    SynSent2 = 9,
}

impl TcpState {
    /// Every state, in the kernel's numbering (`TCP_CONNTRACK_*`).
    pub const ALL: [TcpState; 10] = [
        TcpState::None,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::Established,
        TcpState::FinWait,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::SynSent2,
    ];

    /// The name `conntrack -L` prints (and the Outcome's JSON uses).
    pub fn name(self) -> &'static str {
        match self {
            TcpState::None => "NONE",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait => "FIN_WAIT",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::SynSent2 => "SYN_SENT2",
        }
    }

    /// The kernel's default timeout for the state (`nf_conntrack_tcp_timeout_*`).
    pub fn timeout(self) -> Duration {
        Duration::from_secs(match self {
            TcpState::None => 0,
            TcpState::SynSent => 120,
            TcpState::SynRecv => 60,
            TcpState::Established => 432_000,
            TcpState::FinWait => 120,
            TcpState::CloseWait => 60,
            TcpState::LastAck => 30,
            TcpState::TimeWait => 120,
            TcpState::Close => 10,
            TcpState::SynSent2 => 120,
        })
    }

    fn from_index(i: u8) -> TcpState {
        TcpState::ALL[usize::from(i)]
    }
}

impl FromStr for TcpState {
    type Err = String;

    /// A `conntrack -L` state name.
    fn from_str(s: &str) -> Result<Self, String> {
        TcpState::ALL.into_iter().find(|st| st.name() == s).ok_or_else(|| {
            let names: Vec<&str> = TcpState::ALL.iter().map(|st| st.name()).collect();
            format!("unknown value {s:?}; expected one of {}", names.join(", "))
        })
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `nf_conntrack_tcp_timeout_unacknowledged`: caps the timeout of picked-up connections.
pub const UNACK_TIMEOUT: Duration = Duration::from_secs(300);

// Flag classes (get_conntrack_index).
const SYN: u8 = 0;
const SYNACK: u8 = 1;
const FIN: u8 = 2;
const ACK: u8 = 3;
const RST: u8 = 4;
const NONE: u8 = 5;

// Table cells: a state, or IV (invalid) / IG (ignore).
const IV: u8 = 10;
const IG: u8 = 11;
const SS: u8 = 1;
const SR: u8 = 2;
const ES: u8 = 3;
const FW: u8 = 4;
const CW: u8 = 5;
const LA: u8 = 6;
const TW: u8 = 7;
const CL: u8 = 8;
const S2: u8 = 9;

/// `[direction][flag class][old state]` → new state (kernel 6.x values).
#[rustfmt::skip]
const TRANSITIONS: [[[u8; 10]; 6]; 2] = [
    // ORIGINAL      sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
    [
        /* syn    */ [SS, SS, IG, IG, IG, IG, IG, SS, SS, S2],
        /* synack */ [IV, IV, SR, IV, IV, IV, IV, IV, IV, SR],
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        /* ack    */ [ES, IV, ES, ES, CW, CW, TW, TW, CL, IV],
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* none   */ [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
    // REPLY
    [
        /* syn    */ [IV, S2, IV, IV, IV, IV, IV, SS, IV, S2],
        /* synack */ [IV, SR, IG, IG, IG, IG, IG, IG, IG, SR],
        /* fin    */ [IV, IV, FW, FW, LA, LA, LA, TW, CL, IV],
        /* ack    */ [IV, IG, SR, ES, CW, CW, TW, TW, CL, IG],
        /* rst    */ [IV, CL, CL, CL, CL, CL, CL, CL, CL, CL],
        /* none   */ [IV, IV, IV, IV, IV, IV, IV, IV, IV, IV],
    ],
];

fn flag_class(flags: u8) -> u8 {
    use crate::packet::TcpFlags as F;
    if flags & F::RST != 0 {
        RST
    } else if flags & F::SYN != 0 {
        if flags & F::ACK != 0 { SYNACK } else { SYN }
    } else if flags & F::FIN != 0 {
        FIN
    } else if flags & F::ACK != 0 {
        ACK
    } else {
        NONE
    }
}

/// tcp_error: the flag combinations conntrack accepts (PSH, ECE and CWR ignored).
pub fn valid_flags(flags: u8) -> bool {
    use crate::packet::TcpFlags as F;
    let f = flags & !(F::PSH | F::ECE | F::CWR);
    const VALID: [u8; 9] = [
        F::SYN,
        F::SYN | F::URG,
        F::SYN | F::ACK,
        F::RST,
        F::RST | F::ACK,
        F::FIN | F::ACK,
        F::FIN | F::ACK | F::URG,
        F::ACK,
        F::ACK | F::URG,
    ];
    VALID.contains(&f)
}

/// Per-connection TCP tracking state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConn {
    pub state: TcpState,
    last_dir: u8,
    last_index: u8,
    /// A FIN was seen from this direction (IP_CT_TCP_FLAG_CLOSE_INIT).
    close_init: [bool; 2],
    /// Sent data not yet acknowledged (IP_CT_TCP_FLAG_DATA_UNACKNOWLEDGED).
    unacked: [bool; 2],
    simultaneous_open: bool,
    challenge_ack: bool,
}

/// What the tracker decided for one segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpVerdict {
    /// Accept; refresh the timeout to this value (None: leave the timeout alone).
    Accept { timeout: Option<Duration>, assured: bool },
    /// Not a valid part of the connection: the packet becomes INVALID (untracked).
    Invalid,
    /// A SYN reopening a closed connection: delete the entry and track the packet afresh.
    Reopen,
    /// A RST when no reply was ever seen: delete the entry, accept the packet.
    Kill,
}

impl TcpConn {
    /// A RST in a closing state skips the window check (tcp_can_early_drop).
    fn rst_skips_window(&self, old: TcpState) -> bool {
        matches!(
            old,
            TcpState::FinWait
                | TcpState::LastAck
                | TcpState::TimeWait
                | TcpState::Close
                | TcpState::CloseWait
        )
    }

    /// tcp_new: whether a packet may create a connection; `loose` is nf_conntrack_tcp_loose.
    pub fn new(flags: u8, loose: bool) -> Option<TcpConn> {
        let first = TRANSITIONS[0][usize::from(flag_class(flags))][0];
        if first >= IV || (first != SS && !loose) {
            return None;
        }
        Some(TcpConn {
            state: TcpState::None,
            last_dir: 0,
            last_index: NONE,
            close_init: [false; 2],
            unacked: [false; 2],
            simultaneous_open: false,
            challenge_ack: false,
        })
    }

    /// Runs one segment (direction 0 = original, 1 = reply; `payload` bytes of data) through
    /// the state machine. `seen_reply` and `assured` are the entry's status before this packet.
    pub fn packet(
        &mut self,
        dir: u8,
        flags: u8,
        payload: u32,
        seen_reply: bool,
        assured: bool,
    ) -> TcpVerdict {
        if !valid_flags(flags) {
            return TcpVerdict::Invalid;
        }
        let d = usize::from(dir);
        let old = self.state;
        let index = flag_class(flags);
        let mut new = TRANSITIONS[d][usize::from(index)][old as usize];
        let mut resync = false;

        if new == SS && old >= TcpState::TimeWait {
            // A SYN in TIME_WAIT or CLOSE: reopen if the connection was closed or aborted.
            if self.close_init[0]
                || self.close_init[1]
                || (self.last_dir == dir && self.last_index == RST)
            {
                return TcpVerdict::Reopen;
            }
            new = IG;
        }
        match new {
            IG => {
                if index == SYNACK && self.last_index == SYN && self.last_dir != dir {
                    // A SYN/ACK answering a SYN we ignored: client and server are in sync
                    // (the model assumes the acknowledgement matches) and we follow them.
                    resync = true;
                    self.challenge_ack = false;
                } else {
                    self.last_index = index;
                    self.last_dir = dir;
                    if index == SYN && dir == 0 {
                        self.challenge_ack = old == TcpState::LastAck;
                    }
                    return TcpVerdict::Accept { timeout: None, assured: false };
                }
            }
            IV => return TcpVerdict::Invalid,
            TW if old == TcpState::LastAck
                && index == ACK
                && self.last_dir != dir
                && self.last_index == SYN
                && self.challenge_ack =>
            {
                // An RFC 5961 challenge ACK, not the last ACK.
                self.challenge_ack = false;
                return TcpVerdict::Accept { timeout: None, assured: false };
            }
            S2 => self.simultaneous_open = true,
            SR if dir == 1 && index == ACK && self.simultaneous_open => new = ES,
            _ => {}
        }
        let (old, new) = if resync {
            (TcpState::SynSent, TcpState::SynRecv)
        } else {
            (old, TcpState::from_index(new))
        };
        if !(index == RST && self.rst_skips_window(old)) {
            // tcp_in_window's bookkeeping: data is unacknowledged until the other side
            // acknowledges (everything, in the model). SYNs never count (conntrack starts
            // each side's window at its SYN), and a FIN only leads to states whose timeouts
            // are below the 5-minute cap.
            if payload > 0 {
                self.unacked[d] = true;
            }
            if flags & crate::packet::TcpFlags::ACK != 0 {
                self.unacked[1 - d] = false;
            }
        }

        self.last_index = index;
        self.last_dir = dir;
        self.state = new;
        if old != new && new == TcpState::FinWait {
            self.close_init[d] = true;
        }
        let mut timeout = if index == RST {
            TcpState::Close.timeout()
        } else if (self.unacked[0] || self.unacked[1]) && new.timeout() > UNACK_TIMEOUT {
            UNACK_TIMEOUT
        } else {
            new.timeout()
        };
        let mut set_assured = false;
        if !seen_reply {
            if index == RST {
                return TcpVerdict::Kill;
            }
            if index == SYN && old == TcpState::SynSent {
                // Do not renew the timeout on SYN retransmits.
                return TcpVerdict::Accept { timeout: None, assured: false };
            }
            if new == TcpState::Established {
                timeout = timeout.min(UNACK_TIMEOUT);
            }
        } else if !assured
            && matches!(old, TcpState::SynRecv | TcpState::Established)
            && new == TcpState::Established
        {
            set_assured = true;
        }
        TcpVerdict::Accept { timeout: Some(timeout), assured: set_assured }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::TcpFlags as F;

    const S: u8 = F::SYN;
    const SA: u8 = F::SYN | F::ACK;
    const A: u8 = F::ACK;
    const FA: u8 = F::FIN | F::ACK;
    const R: u8 = F::RST;

    /// Drives a sequence of (dir, flags); returns the states, tracking SEEN_REPLY/ASSURED.
    fn run(seq: &[(u8, u8)]) -> (Vec<TcpState>, bool) {
        let mut c = TcpConn::new(seq[0].1, true).expect("new");
        let (mut seen, mut assured) = (false, false);
        let mut states = vec![];
        for &(dir, flags) in seq {
            match c.packet(dir, flags, 0, seen, assured) {
                TcpVerdict::Accept { assured: a, .. } => assured |= a,
                other => panic!("unexpected {other:?}"),
            }
            seen |= dir == 1;
            states.push(c.state);
        }
        (states, assured)
    }

    #[test]
    fn handshake_data_and_close() {
        use TcpState::*;
        let (states, assured) = run(&[
            (0, S),
            (1, SA),
            (0, A),
            (0, F::PSH | A),
            (1, A),
            (0, FA),
            (1, A),
            (1, FA),
            (0, A),
        ]);
        assert_eq!(
            states,
            [
                SynSent,
                SynRecv,
                Established,
                Established,
                Established,
                FinWait,
                CloseWait,
                LastAck,
                TimeWait
            ]
        );
        assert!(assured);
    }

    #[test]
    fn timeouts_follow_the_state_and_the_pickup_cap() {
        let mut c = TcpConn::new(S, true).unwrap();
        assert_eq!(
            c.packet(0, S, 0, false, false),
            TcpVerdict::Accept { timeout: Some(Duration::from_secs(120)), assured: false }
        );
        // SYN retransmit: timeout not renewed.
        assert_eq!(
            c.packet(0, S, 0, false, false),
            TcpVerdict::Accept { timeout: None, assured: false }
        );
        let mut picked = TcpConn::new(A, true).unwrap();
        assert_eq!(
            picked.packet(0, A, 0, false, false),
            TcpVerdict::Accept { timeout: Some(UNACK_TIMEOUT), assured: false }
        );
        assert_eq!(picked.state, TcpState::Established);
        assert!(TcpConn::new(A, false).is_none());
        assert!(TcpConn::new(R, true).is_none());
        assert!(TcpConn::new(FA, true).is_none());
        assert!(TcpConn::new(SA, true).is_none());
    }

    #[test]
    fn rst_before_any_reply_kills_and_invalid_flags_are_invalid() {
        let mut c = TcpConn::new(S, true).unwrap();
        c.packet(0, S, 0, false, false);
        assert_eq!(c.packet(1, R | A, 0, false, false), TcpVerdict::Kill);
        let mut c = TcpConn::new(S, true).unwrap();
        c.packet(0, S, 0, false, false);
        assert_eq!(c.packet(0, F::FIN, 0, false, false), TcpVerdict::Invalid);
        assert_eq!(c.packet(0, S | F::FIN, 0, false, false), TcpVerdict::Invalid);
        // ACK from the client before the SYN/ACK: invalid.
        assert_eq!(c.packet(0, A, 0, false, false), TcpVerdict::Invalid);
    }

    #[test]
    fn syn_after_close_reopens() {
        let mut c = TcpConn::new(S, true).unwrap();
        for (d, f, seen) in [
            (0, S, false),
            (1, SA, false),
            (0, A, true),
            (0, FA, true),
            (1, FA, true),
            (0, A, true),
        ] {
            c.packet(d, f, 0, seen, false);
        }
        assert_eq!(c.state, TcpState::TimeWait);
        assert_eq!(c.packet(0, S, 0, true, true), TcpVerdict::Reopen);
    }
}
