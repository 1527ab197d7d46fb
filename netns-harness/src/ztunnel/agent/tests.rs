//! The agent against a fake ztunnel: our own client of the protocol, on a real
//! `SOCK_SEQPACKET` socket, receiving real file descriptors. No namespaces are needed: the fd
//! passed is the test process's own network namespace (`/proc/self/ns/net`).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};
use socket2::{Domain, SockAddr, Socket, Type};

use super::*;

const WAIT: Duration = Duration::from_secs(5);

/// What the fake ztunnel received: the request, and what each passed fd pointed at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    request: Request,
    fds: Vec<String>,
}

/// The ztunnel side of the protocol, as ztunnel's in-pod workload manager speaks it.
struct FakeZtunnel {
    sock: Socket,
}

impl FakeZtunnel {
    fn connect(path: &Path) -> FakeZtunnel {
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        let addr = SockAddr::unix(path).unwrap();
        let deadline = Instant::now() + WAIT;
        while let Err(e) = sock.connect(&addr) {
            assert!(Instant::now() < deadline, "connecting to {}: {e}", path.display());
            thread::sleep(Duration::from_millis(5));
        }
        FakeZtunnel { sock }
    }

    fn send(&self, bytes: &[u8]) {
        sendmsg::<UnixAddr>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &[],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    fn hello(&self, version: u64) {
        self.send(&zds::encode_hello(version));
    }

    fn ack(&self, error: &str) {
        self.send(&zds::encode_ack(error));
    }

    /// The next request, with the targets of the fds that came with it (each fd is closed).
    fn next(&self) -> Option<Received> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 4]);
        let msg = recvmsg::<UnixAddr>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let len = msg.bytes;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                for fd in raw {
                    fds.push(owned_target(fd));
                }
            }
        }
        if len == 0 {
            return None;
        }
        let request = zds::decode_request(&buf[..len]).unwrap();
        Some(Received { request, fds })
    }
}

/// Where a received fd points (`net:[…]` for a network namespace); takes ownership and closes it.
#[allow(unsafe_code)]
fn owned_target(fd: RawFd) -> String {
    let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    // SAFETY: the kernel installed this descriptor in our table for this message (SCM_RIGHTS);
    // nothing else knows about it, so we are its only owner.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    target.display().to_string()
}

fn temp_socket(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zds-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("ztunnel.sock")
}

fn pod(name: &str) -> PodEntry {
    PodEntry {
        uid: format!("uid-{name}"),
        info: WorkloadInfo {
            name: name.into(),
            namespace: "default".into(),
            service_account: format!("sa-{name}"),
        },
        netns: PathBuf::from("/proc/self/ns/net"),
    }
}

/// A fake ztunnel that says hello and acks every request with `answer(request)`, until the
/// agent closes or `stop_after` requests; it reports what it received.
fn spawn_fake(
    path: PathBuf,
    stop_after: usize,
    answer: impl Fn(&Request) -> String + Send + 'static,
) -> mpsc::Receiver<Vec<Received>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let fake = FakeZtunnel::connect(&path);
        fake.hello(zds::VERSION_V1);
        let mut got = Vec::new();
        while got.len() < stop_after {
            let Some(r) = fake.next() else { break };
            fake.ack(&answer(&r.request));
            got.push(r);
        }
        let _ = tx.send(got);
    });
    rx
}

fn own_netns() -> String {
    std::fs::read_link("/proc/self/ns/net").unwrap().display().to_string()
}

#[test]
fn a_snapshot_adds_every_pod_with_its_netns_fd_then_says_snapshot_sent() {
    let path = temp_socket("snapshot");
    let mut agent = NodeAgent::listen(&path).unwrap();
    let fake = spawn_fake(path.clone(), 5, |_| String::new());
    agent.snapshot(&[pod("a"), pod("b")], WAIT).unwrap();
    // After the snapshot: an add and a delete at any time, each acked.
    agent.send(&pod("c").add(), Some(Path::new("/proc/self/ns/net")), WAIT).unwrap();
    agent.send(&Request::Del { uid: "uid-a".into() }, None, WAIT).unwrap();
    let got = fake.recv_timeout(WAIT).unwrap();
    let netns = own_netns();
    assert!(netns.starts_with("net:["), "{netns}");
    let expect = |request: Request, fd: bool| Received {
        request,
        fds: if fd { vec![netns.clone()] } else { Vec::new() },
    };
    assert_eq!(
        got,
        vec![
            expect(pod("a").add(), true),
            expect(pod("b").add(), true),
            expect(Request::SnapshotSent, false),
            expect(pod("c").add(), true),
            expect(Request::Del { uid: "uid-a".into() }, false),
        ]
    );
    drop(agent);
    assert!(!path.exists(), "the socket file goes with the agent");
}

#[test]
fn an_error_ack_is_a_refusal_with_ztunnels_message() {
    let path = temp_socket("nack");
    let mut agent = NodeAgent::listen(&path).unwrap();
    let _fake = spawn_fake(path.clone(), 2, |r| match r {
        Request::Add { .. } => "failure to start proxy : bind failed".into(),
        _ => String::new(),
    });
    agent.accept(WAIT).unwrap();
    let err = agent.send(&pod("a").add(), Some(Path::new("/proc/self/ns/net")), WAIT).unwrap_err();
    assert!(
        matches!(&err, AgentError::Refused { error, .. } if error.contains("bind failed")),
        "{err}"
    );
    // The connection stays usable after a refusal, as ztunnel keeps it.
    agent.send(&Request::SnapshotSent, None, WAIT).unwrap();
}

#[test]
fn a_wrong_hello_a_silent_peer_and_a_closed_peer_are_errors() {
    let path = temp_socket("hello");
    let mut agent = NodeAgent::listen(&path).unwrap();
    let p = path.clone();
    let t = thread::spawn(move || {
        let fake = FakeZtunnel::connect(&p);
        fake.hello(2);
        thread::sleep(Duration::from_millis(200));
    });
    let err = agent.accept(WAIT).unwrap_err();
    assert!(err.to_string().contains("ZDS version 2"), "{err}");
    t.join().unwrap();

    // Nobody connects: a timeout, not a hang.
    let short = Duration::from_millis(100);
    assert!(matches!(agent.accept(short), Err(AgentError::Timeout { .. })));

    // A ztunnel that connects, says hello and goes away without acking.
    let p = path.clone();
    let t = thread::spawn(move || {
        let fake = FakeZtunnel::connect(&p);
        fake.hello(zds::VERSION_V1);
        let _ = fake.next();
    });
    agent.accept(WAIT).unwrap();
    let err = agent.send(&Request::SnapshotSent, None, WAIT).unwrap_err();
    t.join().unwrap();
    assert!(matches!(err, AgentError::Closed { .. }), "{err}");
    assert!(!agent.connected());
}

#[test]
fn a_restarted_ztunnel_gets_the_whole_snapshot_again() {
    let path = temp_socket("restart");
    let mut agent = NodeAgent::listen(&path).unwrap();
    for _ in 0..2 {
        let fake = spawn_fake(path.clone(), 2, |_| String::new());
        agent.snapshot(&[pod("a")], WAIT).unwrap();
        let got = fake.recv_timeout(WAIT).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].request, pod("a").add());
        assert_eq!(got[1].request, Request::SnapshotSent);
    }
}

#[test]
fn an_add_without_a_netns_or_too_long_is_refused_before_sending() {
    let path = temp_socket("local");
    let mut agent = NodeAgent::listen(&path).unwrap();
    let _fake = spawn_fake(path.clone(), 1, |_| String::new());
    agent.accept(WAIT).unwrap();
    let err = agent.send(&pod("a").add(), None, WAIT).unwrap_err();
    assert!(err.to_string().contains("needs a netns"), "{err}");
    let mut big = pod("a");
    big.info.name = "x".repeat(MAX_MESSAGE);
    let err = agent.send(&big.add(), Some(&big.netns), WAIT).unwrap_err();
    assert!(err.to_string().contains("at most 1024"), "{err}");
}
