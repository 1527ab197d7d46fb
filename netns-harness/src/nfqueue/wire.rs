//! The nfnetlink_queue wire format: the few messages a delay line needs, encoded and decoded
//! as bytes, with no I/O.
//!
//! A message is a netlink header (`struct nlmsghdr`, host byte order), the nfnetlink header
//! (`struct nfgenmsg`: family, version, and the queue number as `res_id`, big-endian), then
//! attributes (`struct nlattr`: length and type in host byte order, padded to 4 bytes) whose
//! payloads nfnetlink_queue reads in network byte order. The layouts are the kernel's
//! `include/uapi/linux/netfilter/nfnetlink_queue.h`:
//!
//! | message | attributes we send or read |
//! | --- | --- |
//! | `NFQNL_MSG_CONFIG` | `NFQA_CFG_CMD` (bind / unbind), `NFQA_CFG_PARAMS` (copy mode and range), `NFQA_CFG_QUEUE_MAXLEN`, `NFQA_CFG_MASK` + `NFQA_CFG_FLAGS` (`NFQA_CFG_F_GSO`) |
//! | `NFQNL_MSG_PACKET` (kernel → us) | `NFQA_PACKET_HDR` (packet id, hw protocol, hook); the rest is skipped |
//! | `NFQNL_MSG_VERDICT` | `NFQA_VERDICT_HDR` (verdict, packet id) |
//! | `NLMSG_ERROR` (kernel → us) | an errno (0: the acknowledgement of a request with `NLM_F_ACK`) and the request's header |

use std::fmt;

/// `NFNL_SUBSYS_QUEUE`: the high byte of every nfnetlink_queue message type.
const SUBSYS_QUEUE: u16 = 3;
const MSG_PACKET: u16 = 0;
const MSG_VERDICT: u16 = 1;
const MSG_CONFIG: u16 = 2;

const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// `sizeof(struct nlmsghdr)`.
const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nfgenmsg)`.
const NFGEN_LEN: usize = 4;
const AF_UNSPEC: u8 = 0;
const NFNETLINK_V0: u8 = 0;
/// The attribute type bits (`NLA_TYPE_MASK`: without `NLA_F_NESTED` / `NLA_F_NET_BYTEORDER`).
const NLA_TYPE_MASK: u16 = 0x3fff;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
/// `NFQA_CFG_F_GSO`: queue a GSO packet whole, as the stack built it, rather than have the
/// kernel cut it into segments first (we never read the payload, so nothing needs them cut).
const CFG_F_GSO: u32 = 4;
const CFG_CMD_BIND: u8 = 1;
const CFG_CMD_UNBIND: u8 = 2;
/// `NFQNL_COPY_META`: the kernel sends the packet's metadata (id, devices, mark), no payload.
const COPY_META: u8 = 1;

/// What to do with a queued packet (`NF_DROP`, `NF_ACCEPT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Drop = 0,
    Accept = 1,
}

/// A message from the kernel, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A queued packet: its id on the queue (what a verdict names).
    Packet { queue: u16, id: u32 },
    /// The answer to request `seq`: `errno` 0 is an acknowledgement, anything else a refusal.
    Error { seq: u32, errno: i32 },
    /// Anything else (`NLMSG_NOOP`, `NLMSG_DONE`, other subsystems): nothing to act on.
    Other { kind: u16 },
}

/// Why bytes from the kernel could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed nfnetlink_queue message: {}", self.0)
    }
}

impl std::error::Error for WireError {}

/// A request with the netlink and nfnetlink headers, its length filled in by [`Request::finish`].
struct Request(Vec<u8>);

impl Request {
    fn new(msg: u16, flags: u16, seq: u32, queue: u16) -> Request {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        b.extend_from_slice(&((SUBSYS_QUEUE << 8) | msg).to_ne_bytes());
        b.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel fills in ours
        b.extend_from_slice(&[AF_UNSPEC, NFNETLINK_V0]);
        b.extend_from_slice(&queue.to_be_bytes());
        Request(b)
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Request {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(self.0.len() + align(len) - len, 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Attributes are padded to 4 bytes (`NLA_ALIGN`, `NLMSG_ALIGN`).
fn align(len: usize) -> usize {
    (len + 3) & !3
}

/// Binds `queue` to the sending socket, copying metadata only (no payload), with room for
/// `max_len` packets held at once (`NFQA_CFG_QUEUE_MAXLEN`), GSO packets queued whole; asks
/// for an acknowledgement. The kernel applies the command first, then the settings, all or none.
pub fn bind(seq: u32, queue: u16, max_len: u32) -> Vec<u8> {
    let mut params = 0u32.to_be_bytes().to_vec(); // copy_range: unused with COPY_META
    params.push(COPY_META);
    Request::new(MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attr(NFQA_CFG_CMD, &[CFG_CMD_BIND, 0, 0, 0]) // command, pad, pf (unused since 3.8)
        .attr(NFQA_CFG_PARAMS, &params)
        .attr(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())
        .attr(NFQA_CFG_MASK, &CFG_F_GSO.to_be_bytes())
        .attr(NFQA_CFG_FLAGS, &CFG_F_GSO.to_be_bytes())
        .finish()
}

/// Unbinds `queue` (the kernel drops what is still held on it); asks for an acknowledgement.
pub fn unbind(seq: u32, queue: u16) -> Vec<u8> {
    Request::new(MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attr(NFQA_CFG_CMD, &[CFG_CMD_UNBIND, 0, 0, 0])
        .finish()
}

/// The verdict on packet `id` of `queue` (no acknowledgement: errors still come back).
pub fn verdict(seq: u32, queue: u16, id: u32, verdict: Verdict) -> Vec<u8> {
    let mut hdr = (verdict as u32).to_be_bytes().to_vec();
    hdr.extend_from_slice(&id.to_be_bytes());
    Request::new(MSG_VERDICT, 0, seq, queue).attr(NFQA_VERDICT_HDR, &hdr).finish()
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Every message in one datagram from the kernel, in order.
pub fn decode(datagram: &[u8]) -> Result<Vec<Message>, WireError> {
    let mut out = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(WireError(format!("{} trailing bytes, short of a header", rest.len())));
        }
        let len = u32_ne(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(WireError(format!(
                "message length {len} with {} bytes left in the datagram",
                rest.len()
            )));
        }
        let (kind, seq) = (u16_ne(rest, 4), u32_ne(rest, 8));
        out.push(decode_one(kind, seq, &rest[NLMSG_HDRLEN..len])?);
        rest = &rest[align(len).min(rest.len())..];
    }
    Ok(out)
}

fn decode_one(kind: u16, seq: u32, body: &[u8]) -> Result<Message, WireError> {
    match kind {
        NLMSG_ERROR => {
            if body.len() < 4 {
                return Err(WireError(format!("NLMSG_ERROR with a {}-byte body", body.len())));
            }
            // The error is the negated errno; the request's header follows.
            let errno = -(u32_ne(body, 0) as i32);
            Ok(Message::Error { seq, errno })
        }
        k if k == (SUBSYS_QUEUE << 8) | MSG_PACKET => {
            if body.len() < NFGEN_LEN {
                return Err(WireError("NFQNL_MSG_PACKET without its nfgenmsg".into()));
            }
            let queue = u16::from_be_bytes([body[2], body[3]]);
            let hdr = attribute(&body[NFGEN_LEN..], NFQA_PACKET_HDR)?.ok_or_else(|| {
                WireError(format!("packet on queue {queue} without NFQA_PACKET_HDR"))
            })?;
            if hdr.len() < 4 {
                return Err(WireError(format!("NFQA_PACKET_HDR of {} bytes", hdr.len())));
            }
            Ok(Message::Packet { queue, id: u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) })
        }
        kind => Ok(Message::Other { kind }),
    }
}

/// The payload of the first attribute of type `kind` in `attrs`.
fn attribute(mut attrs: &[u8], kind: u16) -> Result<Option<&[u8]>, WireError> {
    while attrs.len() >= 4 {
        let len = u16_ne(attrs, 0) as usize;
        if len < 4 || len > attrs.len() {
            return Err(WireError(format!(
                "attribute length {len} with {} bytes left",
                attrs.len()
            )));
        }
        if u16_ne(attrs, 2) & NLA_TYPE_MASK == kind {
            return Ok(Some(&attrs[4..len]));
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    Ok(None)
}

// The byte vectors below are little-endian where netlink uses host order (x86-64, aarch64).
#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    #[test]
    fn bind_is_a_config_request_with_command_params_and_max_len() {
        let bytes = bind(7, 0x0102, 4096);
        #[rustfmt::skip]
        let expected = vec![
            64, 0, 0, 0,        // nlmsg_len
            0x02, 0x03,         // type: NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG
            0x05, 0x00,         // flags: REQUEST | ACK
            7, 0, 0, 0,         // seq
            0, 0, 0, 0,         // pid
            0, 0, 0x01, 0x02,   // AF_UNSPEC, NFNETLINK_V0, queue 0x0102 big-endian
            8, 0, 1, 0,         // NFQA_CFG_CMD, 4 bytes
            1, 0, 0, 0,         //   BIND, pad, pf 0
            9, 0, 2, 0,         // NFQA_CFG_PARAMS, 5 bytes
            0, 0, 0, 0, 1,      //   copy_range 0, NFQNL_COPY_META
            0, 0, 0,            //   padding to 4
            8, 0, 3, 0,         // NFQA_CFG_QUEUE_MAXLEN
            0, 0, 0x10, 0,      //   4096 big-endian
            8, 0, 4, 0,         // NFQA_CFG_MASK
            0, 0, 0, 4,         //   NFQA_CFG_F_GSO
            8, 0, 5, 0,         // NFQA_CFG_FLAGS
            0, 0, 0, 4,         //   NFQA_CFG_F_GSO
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn unbind_carries_only_the_command() {
        let bytes = unbind(1, 3);
        assert_eq!(bytes.len(), 28);
        assert_eq!(&bytes[..4], &[28, 0, 0, 0]);
        assert_eq!(&bytes[16..], &[0, 0, 0, 3, 8, 0, 1, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn a_verdict_names_the_packet_in_network_order() {
        let bytes = verdict(9, 1, 0x0a0b0c0d, Verdict::Accept);
        #[rustfmt::skip]
        let expected = vec![
            32, 0, 0, 0, 0x01, 0x03, 0x01, 0x00, 9, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 1,
            12, 0, 2, 0,        // NFQA_VERDICT_HDR, 8 bytes
            0, 0, 0, 1,         //   NF_ACCEPT
            0x0a, 0x0b, 0x0c, 0x0d,
        ];
        assert_eq!(bytes, expected);
    }

    /// A packet message as the kernel sends it with COPY_META: other attributes around the
    /// header, one with NLA_F_NET_BYTEORDER set.
    fn packet(queue: u16, id: u32) -> Vec<u8> {
        let mut body = vec![2, 0];
        body.extend_from_slice(&queue.to_be_bytes());
        body.extend_from_slice(&[8, 0, 3, 0x40, 0, 0, 0, 9]); // NFQA_MARK
        body.extend_from_slice(&[11, 0, 1, 0]); // NFQA_PACKET_HDR, 7 bytes
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(&[0x08, 0x00, 2, 0]); // hw_protocol, hook, padding
        body.extend_from_slice(&[8, 0, 6, 0, 0, 0, 0, 4]); // NFQA_IFINDEX_OUTDEV
        let mut msg = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&[0x00, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn packets_decode_to_their_queue_and_id_several_per_datagram() {
        let mut datagram = packet(1, 41);
        datagram.extend(packet(1, 42));
        assert_eq!(
            decode(&datagram).unwrap(),
            vec![Message::Packet { queue: 1, id: 41 }, Message::Packet { queue: 1, id: 42 }]
        );
    }

    #[test]
    fn acks_and_refusals_decode_with_their_sequence_number() {
        let mut ack = vec![36, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0];
        ack.extend_from_slice(&0i32.to_ne_bytes());
        ack.extend_from_slice(&bind(7, 1, 8)[..16]);
        let mut refused = ack.clone();
        refused[16..20].copy_from_slice(&(-16i32).to_ne_bytes()); // -EBUSY
        assert_eq!(decode(&ack).unwrap(), vec![Message::Error { seq: 7, errno: 0 }]);
        assert_eq!(decode(&refused).unwrap(), vec![Message::Error { seq: 7, errno: 16 }]);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let whole = packet(1, 5);
        for cut in 1..whole.len() {
            assert!(decode(&whole[..cut]).is_err(), "cut at {cut}");
        }
        let mut no_header = whole.clone();
        no_header[30] = 9; // the NFQA_PACKET_HDR becomes another attribute
        assert!(decode(&no_header).unwrap_err().to_string().contains("NFQA_PACKET_HDR"));
    }
}
