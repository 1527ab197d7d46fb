//! Watching a peer's HTTP/2 frames go by, to time out an unfinished header block.
//!
//! h2 buffers a header block (HEADERS, then CONTINUATION frames until one carries
//! END_HEADERS) before the request exists, so nothing above h2 can see a peer that starts a
//! block and never finishes it. [`HeaderBlocks`] follows the frame boundaries of the bytes h2
//! reads (pure: bytes in, "a block opened / closed" out); [`Watched`] wraps the stream h2 reads
//! from and records, in a shared [`BlockClock`], since when a block has been open. The 15008
//! connection loop closes the connection when a block stays open past its limit.
//!
//! Only boundaries are parsed (the 9-byte frame header: length, type, flags); payloads are
//! skipped unread. A frame whose length exceeds what the peer may send is h2's to reject.

use std::io;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The client connection preface (RFC 9113 §3.4), sent before the first frame.
pub const CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;

/// Where the parser is in the byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// Inside the client preface, this many bytes of it still to come.
    Preface(usize),
    /// Inside a frame header, this many of its bytes collected.
    Header(usize),
    /// Inside a frame's payload, this many bytes still to skip.
    Payload(usize),
}

/// Follows frame boundaries; knows whether a header block is open.
#[derive(Debug, Clone)]
pub struct HeaderBlocks {
    pos: Pos,
    head: [u8; FRAME_HEADER_LEN],
    open: bool,
}

impl HeaderBlocks {
    /// For the bytes a server reads: the client preface first, then frames.
    pub fn server() -> Self {
        HeaderBlocks { pos: Pos::Preface(CLIENT_PREFACE.len()), head: [0; 9], open: false }
    }

    /// For the bytes a client reads: frames from the start.
    pub fn client() -> Self {
        HeaderBlocks { pos: Pos::Header(0), head: [0; 9], open: false }
    }

    /// Whether a header block has started and not yet ended.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Feed bytes as they were read; returns whether a block is open afterwards.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self.pos {
                Pos::Preface(left) => {
                    let n = left.min(bytes.len());
                    bytes = &bytes[n..];
                    self.pos = if n == left { Pos::Header(0) } else { Pos::Preface(left - n) };
                }
                Pos::Header(have) => {
                    let n = (FRAME_HEADER_LEN - have).min(bytes.len());
                    self.head[have..have + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if have + n < FRAME_HEADER_LEN {
                        self.pos = Pos::Header(have + n);
                        continue;
                    }
                    let len = usize::from(self.head[0]) << 16
                        | usize::from(self.head[1]) << 8
                        | usize::from(self.head[2]);
                    let (kind, flags) = (self.head[3], self.head[4]);
                    let ends = flags & FLAG_END_HEADERS != 0;
                    match kind {
                        TYPE_HEADERS | TYPE_PUSH_PROMISE => self.open = !ends,
                        TYPE_CONTINUATION if ends => self.open = false,
                        _ => {}
                    }
                    self.pos = if len == 0 { Pos::Header(0) } else { Pos::Payload(len) };
                }
                Pos::Payload(left) => {
                    let n = left.min(bytes.len());
                    bytes = &bytes[n..];
                    self.pos = if n == left { Pos::Header(0) } else { Pos::Payload(left - n) };
                }
            }
        }
        self.open
    }
}

/// Since when a header block has been open on one connection (shared by [`Watched`] and the
/// connection loop); `changed` fires when a block opens.
#[derive(Debug, Default)]
pub struct BlockClock {
    open_since: Mutex<Option<Instant>>,
    pub changed: Notify,
}

impl BlockClock {
    pub fn open_since(&self) -> Option<Instant> {
        *self.open_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, open: bool) {
        let mut since = self.open_since.lock().unwrap_or_else(|e| e.into_inner());
        match (open, since.is_some()) {
            (true, false) => {
                *since = Some(Instant::now());
                self.changed.notify_one();
            }
            (false, true) => *since = None,
            _ => {}
        }
    }
}

/// A stream whose reads are fed to a [`HeaderBlocks`]; writes pass through.
#[derive(Debug)]
pub struct Watched<S> {
    inner: S,
    blocks: HeaderBlocks,
    clock: std::sync::Arc<BlockClock>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, blocks: HeaderBlocks, clock: std::sync::Arc<BlockClock>) -> Self {
        Watched { inner, blocks, clock }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let me = &mut *self;
            let open = me.blocks.feed(&buf.filled()[before..]);
            me.clock.set(open);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A frame header: `len` payload bytes of `kind` with `flags` on stream 1.
#[cfg(test)]
pub(crate) fn frame_header(len: usize, kind: u8, flags: u8) -> [u8; 9] {
    let l = u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes();
    [l[1], l[2], l[3], kind, flags, 0, 0, 0, 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = frame_header(payload.len(), kind, flags).to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn a_block_is_open_from_headers_without_end_headers_until_a_continuation_ends_it() {
        let mut b = HeaderBlocks::server();
        assert!(!b.feed(CLIENT_PREFACE));
        assert!(!b.feed(&frame(0x4, 0, &[0; 6]))); // SETTINGS
        assert!(b.feed(&frame(TYPE_HEADERS, 0, &[0x82; 40])));
        assert!(b.feed(&frame(TYPE_CONTINUATION, 0, &[0x82; 100])));
        assert!(!b.feed(&frame(TYPE_CONTINUATION, FLAG_END_HEADERS, &[0x82; 3])));
        // A complete HEADERS frame never opens one; DATA and PING do not touch it.
        assert!(!b.feed(&frame(TYPE_HEADERS, FLAG_END_HEADERS | 0x1, &[0x82; 5])));
        assert!(!b.feed(&frame(0x0, 0, &[7; 300])));
        assert!(!b.feed(&frame(0x6, 0, &[0; 8])));
    }

    #[test]
    fn boundaries_survive_any_split_of_the_bytes() {
        let mut stream = CLIENT_PREFACE.to_vec();
        stream.extend(frame(0x4, 0, &[]));
        stream.extend(frame(0x0, 0, &[TYPE_HEADERS; 33])); // payload bytes that look like frames
        stream.extend(frame(TYPE_HEADERS, 0, &[1; 17]));
        let whole = HeaderBlocks::server().feed(&stream);
        assert!(whole);
        for chunk in 1..stream.len() {
            let mut b = HeaderBlocks::server();
            let mut open = false;
            for part in stream.chunks(chunk) {
                open = b.feed(part);
            }
            assert_eq!(open, whole, "chunks of {chunk}");
        }
    }

    #[test]
    fn a_client_reads_frames_from_the_start() {
        let mut b = HeaderBlocks::client();
        assert!(b.feed(&frame(TYPE_PUSH_PROMISE, 0, &[0; 4])));
        assert!(!b.feed(&frame(TYPE_CONTINUATION, FLAG_END_HEADERS, &[])));
    }
}
