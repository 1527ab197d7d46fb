//! The node agent's end of ZDS for one ztunnel: what the CNI node agent does for a real
//! ztunnel, played by the harness. A `SOCK_SEQPACKET` unix socket the agent listens on and
//! ztunnel connects to (`INPOD_UDS`); ztunnel says hello, then the agent sends requests one at a
//! time and waits for each ack ([`super::zds`] has the bytes). An `AddWorkload` carries the pod's
//! network namespace as an open file descriptor (`SCM_RIGHTS`), which is how ztunnel gets into
//! the pod to open its listeners there.
//!
//! Blocking with timeouts (the run driver calls it between steps): accept and receive use
//! `SO_RCVTIMEO`, send `SO_SNDTIMEO`. ztunnel reconnects after a restart; the next
//! [`NodeAgent::snapshot`] accepts the new connection and sends the whole set again, as the real
//! agent does on every connection.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, recvmsg, sendmsg};
use socket2::{Domain, SockAddr, Socket, Type};

use super::zds::{self, Request, WorkloadInfo};

/// ztunnel reads a request into a 1024-byte buffer; a longer one is refused as truncated.
pub const MAX_MESSAGE: usize = 1024;

/// Why the agent could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{step}: {source}")]
    Io { step: String, source: io::Error },
    #[error("{step}: ztunnel did not answer within {timeout:?}")]
    Timeout { step: String, timeout: Duration },
    #[error("{step}: ztunnel closed the ZDS connection")]
    Closed { step: String },
    #[error("{step}: {message}")]
    Protocol { step: String, message: String },
    /// ztunnel answered with an error ack.
    #[error("{step}: ztunnel refused it: {error}")]
    Refused { step: String, error: String },
}

/// A pod as the agent announces it: the uid (only a key for ZDS), the identity ztunnel looks up
/// in its config, and the netns path whose fd goes with the add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub uid: String,
    pub info: WorkloadInfo,
    pub netns: PathBuf,
}

impl PodEntry {
    pub fn add(&self) -> Request {
        Request::Add { uid: self.uid.clone(), info: self.info.clone() }
    }
}

/// The listening socket and the connection of one ztunnel.
#[derive(Debug)]
pub struct NodeAgent {
    path: PathBuf,
    listener: Socket,
    conn: Option<Socket>,
}

fn io_err(step: &str) -> impl FnOnce(io::Error) -> AgentError + '_ {
    move |source| AgentError::Io { step: step.to_string(), source }
}

fn would_block(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl NodeAgent {
    /// Listens at `path` (a stale socket file there is removed first, as ztunnel's own test
    /// server does).
    pub fn listen(path: &Path) -> Result<NodeAgent, AgentError> {
        let step = format!("listening for ztunnel at {}", path.display());
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&step)(e)),
        }
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(io_err(&step))?;
        let addr = SockAddr::unix(path).map_err(io_err(&step))?;
        listener.bind(&addr).map_err(io_err(&step))?;
        listener.listen(8).map_err(io_err(&step))?;
        Ok(NodeAgent { path: path.to_path_buf(), listener, conn: None })
    }

    /// The socket's path (ztunnel's `INPOD_UDS`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a ztunnel is connected (as far as the agent knows).
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Forgets the connection (ztunnel was killed).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// Waits up to `timeout` for a ztunnel to connect and say hello (V1). A previous connection
    /// is dropped.
    pub fn accept(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let step = "accepting ztunnel's ZDS connection";
        self.conn = None;
        self.listener.set_read_timeout(Some(timeout)).map_err(io_err(step))?;
        let conn = match self.listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if would_block(&e) => {
                return Err(AgentError::Timeout { step: step.into(), timeout });
            }
            Err(e) => return Err(io_err(step)(e)),
        };
        conn.set_read_timeout(Some(timeout)).map_err(io_err(step))?;
        conn.set_write_timeout(Some(timeout)).map_err(io_err(step))?;
        let step = "reading ztunnel's hello";
        let hello = receive(&conn, step, timeout)?;
        let version = zds::decode_hello(&hello)
            .map_err(|e| AgentError::Protocol { step: step.into(), message: e.to_string() })?;
        if version != zds::VERSION_V1 {
            return Err(AgentError::Protocol {
                step: step.into(),
                message: format!(
                    "ZDS version {version}; the agent speaks V1 ({})",
                    zds::VERSION_V1
                ),
            });
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Sends one request (with the netns fd of `netns` for an add) and waits for its ack.
    pub fn send(
        &mut self,
        req: &Request,
        netns: Option<&Path>,
        timeout: Duration,
    ) -> Result<(), AgentError> {
        let step = describe(req);
        let Some(conn) = self.conn.as_ref() else {
            return Err(AgentError::Closed { step });
        };
        let bytes = zds::encode_request(req);
        if bytes.len() > MAX_MESSAGE {
            return Err(AgentError::Protocol {
                step,
                message: format!("{} bytes; ztunnel reads at most {MAX_MESSAGE}", bytes.len()),
            });
        }
        let file = match (req.carries_fd(), netns) {
            (true, Some(path)) => Some(File::open(path).map_err(|e| AgentError::Io {
                step: format!("{step}: opening {}", path.display()),
                source: e,
            })?),
            (true, None) => {
                return Err(AgentError::Protocol { step, message: "an add needs a netns".into() });
            }
            (false, _) => None,
        };
        let fds = file.as_ref().map(|f| [f.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage<'_>> =
            fds.as_ref().map(|fds| ControlMessage::ScmRights(fds)).into_iter().collect();
        let sent = sendmsg::<UnixAddr>(
            conn.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        );
        match sent {
            Ok(_) => {}
            Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => {
                self.conn = None;
                return Err(AgentError::Closed { step });
            }
            Err(e) => return Err(io_err(&step)(io::Error::from(e))),
        }
        let answer = match receive(conn, &step, timeout) {
            Ok(a) => a,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        match zds::decode_ack(&answer) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(AgentError::Refused { step, error }),
            Err(e) => Err(AgentError::Protocol { step, message: e.to_string() }),
        }
    }

    /// What the agent does on every new connection: accept it, add every pod (each with its
    /// fd, each acked), then `SnapshotSent` (ztunnel drains any pod it serves that was not in
    /// the snapshot, and becomes ready).
    pub fn snapshot(&mut self, pods: &[PodEntry], timeout: Duration) -> Result<(), AgentError> {
        self.accept(timeout)?;
        for pod in pods {
            self.send(&pod.add(), Some(&pod.netns), timeout)?;
        }
        self.send(&Request::SnapshotSent, None, timeout)
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One message from ztunnel (no fd is expected on this side). EOF is [`AgentError::Closed`].
fn receive(conn: &Socket, step: &str, timeout: Duration) -> Result<Vec<u8>, AgentError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let got = recvmsg::<UnixAddr>(conn.as_raw_fd(), &mut iov, None, MsgFlags::MSG_CMSG_CLOEXEC);
    let (len, truncated) = match got {
        Ok(msg) => (msg.bytes, msg.flags.contains(MsgFlags::MSG_TRUNC)),
        Err(nix::errno::Errno::EAGAIN) => {
            return Err(AgentError::Timeout { step: step.into(), timeout });
        }
        Err(nix::errno::Errno::ECONNRESET) => return Err(AgentError::Closed { step: step.into() }),
        Err(e) => return Err(io_err(step)(io::Error::from(e))),
    };
    if len == 0 {
        return Err(AgentError::Closed { step: step.into() });
    }
    if truncated {
        return Err(AgentError::Protocol {
            step: step.into(),
            message: format!("a message longer than {MAX_MESSAGE} bytes"),
        });
    }
    buf.truncate(len);
    Ok(buf)
}

/// A request in words, for errors.
fn describe(req: &Request) -> String {
    match req {
        Request::Add { uid, info } => {
            format!("adding pod {}.{} (uid {uid})", info.name, info.namespace)
        }
        Request::Keep { uid } => format!("keeping uid {uid}"),
        Request::Del { uid } => format!("deleting uid {uid}"),
        Request::SnapshotSent => "ending the snapshot".into(),
    }
}

#[cfg(test)]
mod tests;
