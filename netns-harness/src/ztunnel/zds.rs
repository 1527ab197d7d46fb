//! The ZDS messages (ztunnel's node-agent protocol, `istio.workload.zds` in ztunnel's
//! `proto/zds.proto`) as bytes: hand-encoded protobuf, written from the field numbers, so the
//! harness needs no protobuf code generator. Pure: no sockets here (see [`super::agent`]).
//!
//! One socket message is one protobuf message; there is no length prefix.
//!
//! | message | direction | fields |
//! | --- | --- | --- |
//! | `ZdsHello` | ztunnel → agent, first, bare | `version = 1` (varint; `V1 = 1`) |
//! | `WorkloadRequest` | agent → ztunnel | oneof `add = 1`, `del = 2`, `snapshot_sent = 3`, `keep = 5` |
//! | `AddWorkload` | | `uid = 1`, `workload_info = 2` |
//! | `WorkloadInfo` | | `name = 1`, `namespace = 2`, `service_account = 3` (4 is reserved) |
//! | `DelWorkload` | | `uid = 2` (**not** 1) |
//! | `KeepWorkload` | | `uid = 1` |
//! | `SnapshotSent` | | no fields |
//! | `WorkloadResponse` | ztunnel → agent, one per request | oneof `ack = 1` |
//! | `Ack` | | `error = 1` (empty: success) |
//!
//! Proto3 rules that matter: a string equal to `""` is not written; a present sub-message is
//! written even when empty (an `AddWorkload` without `workload_info` makes ztunnel exit, so the
//! encoder always writes it); unknown fields are skipped when decoding.

use std::fmt;

/// `Version.V1`, the only protocol version.
pub const VERSION_V1: u64 = 1;

/// The pod identity ztunnel matches against its config (`name`, `namespace`,
/// `serviceAccount` of a workload on its node).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WorkloadInfo {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
}

/// What the node agent sends (`WorkloadRequest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A pod to serve; the socket message carries its netns fd (`SCM_RIGHTS`).
    Add { uid: String, info: WorkloadInfo },
    /// Before the snapshot ends: keep a pod ztunnel already serves.
    Keep { uid: String },
    /// Stop serving a pod.
    Del { uid: String },
    /// Every pod of the snapshot was sent.
    SnapshotSent,
}

impl Request {
    /// Whether the socket message must carry the pod's netns fd.
    pub fn carries_fd(&self) -> bool {
        matches!(self, Request::Add { .. })
    }
}

/// A message that is not what the protocol says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn err<T>(msg: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(msg.into()))
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A proto3 string: omitted when empty.
fn put_string(out: &mut Vec<u8>, field: u32, s: &str) {
    if !s.is_empty() {
        put_bytes(out, field, s.as_bytes());
    }
}

/// One field as read from the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    /// Fixed-width fields (skipped: no ZDS field uses them).
    Fixed,
}

/// The fields of one message, in order.
fn fields(mut buf: &[u8]) -> Result<Vec<(u32, Value<'_>)>, WireError> {
    fn varint(buf: &mut &[u8]) -> Result<u64, WireError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some((&b, rest)) = buf.split_first() else {
                return err("truncated varint");
            };
            *buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("varint longer than 10 bytes")
    }
    let mut out = Vec::new();
    while !buf.is_empty() {
        let tag = varint(&mut buf)?;
        let field =
            u32::try_from(tag >> 3).map_err(|_| WireError("field number too large".into()))?;
        if field == 0 {
            return err("field number 0");
        }
        let value = match (tag & 7) as u8 {
            VARINT => Value::Varint(varint(&mut buf)?),
            LEN => {
                let len = varint(&mut buf)?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > buf.len() {
                    return err(format!(
                        "field {field}: length {len} but {} bytes left",
                        buf.len()
                    ));
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Value::Bytes(bytes)
            }
            FIXED64 | FIXED32 => {
                let n = if (tag & 7) as u8 == FIXED64 { 8 } else { 4 };
                if n > buf.len() {
                    return err(format!("field {field}: truncated fixed-width value"));
                }
                buf = &buf[n..];
                Value::Fixed
            }
            other => return err(format!("field {field}: unsupported wire type {other}")),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn string(field: u32, v: Value<'_>) -> Result<String, WireError> {
    match v {
        Value::Bytes(b) => String::from_utf8(b.to_vec())
            .map_err(|_| WireError(format!("field {field}: not UTF-8"))),
        _ => err(format!("field {field}: expected a string")),
    }
}

fn message(field: u32, v: Value<'_>) -> Result<&[u8], WireError> {
    match v {
        Value::Bytes(b) => Ok(b),
        _ => err(format!("field {field}: expected a message")),
    }
}

/// The `uid` string field `number` of a message (last occurrence wins, as in protobuf).
fn uid_field(buf: &[u8], number: u32) -> Result<String, WireError> {
    let mut uid = String::new();
    for (f, v) in fields(buf)? {
        if f == number {
            uid = string(f, v)?;
        }
    }
    Ok(uid)
}

fn encode_info(info: &WorkloadInfo) -> Vec<u8> {
    let mut out = Vec::new();
    put_string(&mut out, 1, &info.name);
    put_string(&mut out, 2, &info.namespace);
    put_string(&mut out, 3, &info.service_account);
    out
}

fn decode_info(buf: &[u8]) -> Result<WorkloadInfo, WireError> {
    let mut info = WorkloadInfo::default();
    for (f, v) in fields(buf)? {
        match f {
            1 => info.name = string(f, v)?,
            2 => info.namespace = string(f, v)?,
            3 => info.service_account = string(f, v)?,
            _ => {}
        }
    }
    Ok(info)
}

/// `WorkloadRequest` bytes.
pub fn encode_request(req: &Request) -> Vec<u8> {
    let mut inner = Vec::new();
    let field = match req {
        Request::Add { uid, info } => {
            put_string(&mut inner, 1, uid);
            put_bytes(&mut inner, 2, &encode_info(info));
            1
        }
        Request::Del { uid } => {
            put_string(&mut inner, 2, uid);
            2
        }
        Request::SnapshotSent => 3,
        Request::Keep { uid } => {
            put_string(&mut inner, 1, uid);
            5
        }
    };
    let mut out = Vec::new();
    put_bytes(&mut out, field, &inner);
    out
}

/// Reads `WorkloadRequest` bytes (what ztunnel does; the tests' fake ztunnel uses it).
pub fn decode_request(buf: &[u8]) -> Result<Request, WireError> {
    let mut payload = None;
    for (f, v) in fields(buf)? {
        if matches!(f, 1 | 2 | 3 | 5) {
            payload = Some((f, message(f, v)?));
        }
    }
    let Some((f, body)) = payload else { return err("a WorkloadRequest without a payload") };
    Ok(match f {
        1 => {
            let mut uid = String::new();
            let mut info = None;
            for (g, v) in fields(body)? {
                match g {
                    1 => uid = string(g, v)?,
                    2 => info = Some(decode_info(message(g, v)?)?),
                    _ => {}
                }
            }
            let Some(info) = info else { return err("an AddWorkload without workload_info") };
            Request::Add { uid, info }
        }
        2 => Request::Del { uid: uid_field(body, 2)? },
        3 => Request::SnapshotSent,
        _ => Request::Keep { uid: uid_field(body, 1)? },
    })
}

/// `ZdsHello` bytes (what ztunnel sends first).
pub fn encode_hello(version: u64) -> Vec<u8> {
    let mut out = Vec::new();
    if version != 0 {
        put_tag(&mut out, 1, VARINT);
        put_varint(&mut out, version);
    }
    out
}

/// The version of a `ZdsHello` (0 when absent, which is `NOT_USED`).
pub fn decode_hello(buf: &[u8]) -> Result<u64, WireError> {
    let mut version = 0;
    for (f, v) in fields(buf)? {
        if f == 1 {
            match v {
                Value::Varint(n) => version = n,
                _ => return err("ZdsHello.version: expected a varint"),
            }
        }
    }
    Ok(version)
}

/// `WorkloadResponse { ack: Ack { error } }` bytes (what ztunnel answers each request with).
pub fn encode_ack(error: &str) -> Vec<u8> {
    let mut ack = Vec::new();
    put_string(&mut ack, 1, error);
    let mut out = Vec::new();
    put_bytes(&mut out, 1, &ack);
    out
}

/// The `Ack.error` of a `WorkloadResponse`: `Ok(Ok(()))` for success, `Ok(Err(message))` for a
/// refusal, `Err` for bytes that are no `WorkloadResponse` with an ack.
pub fn decode_ack(buf: &[u8]) -> Result<Result<(), String>, WireError> {
    let mut ack = None;
    for (f, v) in fields(buf)? {
        if f == 1 {
            ack = Some(message(f, v)?);
        }
    }
    let Some(ack) = ack else { return err("a WorkloadResponse without an ack") };
    let error = uid_field(ack, 1)?;
    Ok(if error.is_empty() { Ok(()) } else { Err(error) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, ns: &str, sa: &str) -> WorkloadInfo {
        WorkloadInfo { name: name.into(), namespace: ns.into(), service_account: sa.into() }
    }

    #[test]
    fn requests_encode_to_the_bytes_the_field_numbers_give() {
        let add = Request::Add { uid: "uid-1".into(), info: info("server", "default", "server") };
        let mut want = vec![0x0a, 0x22, 0x0a, 0x05];
        want.extend_from_slice(b"uid-1");
        want.extend_from_slice(&[0x12, 0x19, 0x0a, 0x06]);
        want.extend_from_slice(b"server");
        want.extend_from_slice(&[0x12, 0x07]);
        want.extend_from_slice(b"default");
        want.extend_from_slice(&[0x1a, 0x06]);
        want.extend_from_slice(b"server");
        assert_eq!(encode_request(&add), want);
        assert_eq!(want.len(), 36);

        // DelWorkload.uid is field 2; KeepWorkload.uid is field 1.
        let mut del = vec![0x12, 0x07, 0x12, 0x05];
        del.extend_from_slice(b"uid-1");
        assert_eq!(encode_request(&Request::Del { uid: "uid-1".into() }), del);
        let mut keep = vec![0x2a, 0x07, 0x0a, 0x05];
        keep.extend_from_slice(b"uid-1");
        assert_eq!(encode_request(&Request::Keep { uid: "uid-1".into() }), keep);
        assert_eq!(encode_request(&Request::SnapshotSent), [0x1a, 0x00]);
    }

    #[test]
    fn an_add_always_carries_workload_info_even_when_empty() {
        let add = Request::Add { uid: String::new(), info: WorkloadInfo::default() };
        assert_eq!(encode_request(&add), [0x0a, 0x02, 0x12, 0x00]);
        assert_eq!(decode_request(&encode_request(&add)).unwrap(), add);
        // Without it, the request is refused (ztunnel treats it as a protocol error).
        assert!(decode_request(&[0x0a, 0x00]).unwrap_err().0.contains("workload_info"));
    }

    #[test]
    fn requests_round_trip_and_unknown_fields_are_skipped() {
        let long = "x".repeat(300); // a length that needs a two-byte varint
        for req in [
            Request::Add { uid: long.clone(), info: info(&long, "ns", "sa") },
            Request::Del { uid: "d".into() },
            Request::Keep { uid: "k".into() },
            Request::SnapshotSent,
        ] {
            let mut bytes = encode_request(&req);
            // An unknown varint field (9) and an unknown fixed32 field (10) appended.
            bytes.extend_from_slice(&[0x48, 0x96, 0x01, 0x55, 1, 2, 3, 4]);
            assert_eq!(decode_request(&bytes).unwrap(), req, "{req:?}");
        }
    }

    #[test]
    fn hello_and_acks() {
        assert_eq!(encode_hello(VERSION_V1), [0x08, 0x01]);
        assert_eq!(decode_hello(&[0x08, 0x01]).unwrap(), 1);
        assert_eq!(decode_hello(&[]).unwrap(), 0, "NOT_USED");
        assert_eq!(encode_ack(""), [0x0a, 0x00]);
        assert_eq!(encode_ack("boom"), [0x0a, 0x06, 0x0a, 0x04, b'b', b'o', b'o', b'm']);
        assert_eq!(decode_ack(&[0x0a, 0x00]).unwrap(), Ok(()));
        assert_eq!(decode_ack(&encode_ack("boom")).unwrap(), Err("boom".to_string()));
        assert!(decode_ack(&[]).is_err(), "no ack");
    }

    #[test]
    fn malformed_bytes_are_errors_not_panics() {
        for bad in [
            &[0x0a][..],               // tag without length
            &[0x0a, 0x05, 0x01],       // length past the end
            &[0x08],                   // varint cut short
            &[0x0b, 0x00],             // wire type 3 (groups) unsupported
            &[0x00, 0x00],             // field 0
            &[0x0a, 0x02, 0x12, 0x05], // nested length past the end
            &[0xff; 11],               // varint too long
        ] {
            assert!(decode_request(bad).is_err(), "{bad:02x?}");
        }
        assert!(decode_request(&[0x0a, 0x05, 0x0a, 0x01, 0xff, 0x12, 0x00]).is_err(), "bad UTF-8");
    }
}
