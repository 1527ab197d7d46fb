//! The process-level sandbox: user, mount and network namespaces entered once, first thing in
//! `main`, so that nothing the harness does can reach the host's network namespace, rules or
//! conntrack, and everything it creates vanishes when the process exits.
//!
//! # How it works
//!
//! [`Sandbox::enter`] runs on the process's only thread (it checks) and:
//!
//! 1. `unshare(CLONE_NEWUSER)` and maps the caller's uid/gid to 0 inside (`setgroups deny`), which
//!    gives the process every capability *over namespaces it owns* and none over the host's. This is
//!    done as root too (see [`SandboxMode`]): root then runs exactly the code path an unprivileged
//!    user runs, and a bug cannot write a host sysctl or rule. Only when the kernel refuses a user
//!    namespace *and* the caller is root does it fall back to plain root ([`SandboxMode::Root`]).
//! 2. `unshare(CLONE_NEWNS | CLONE_NEWNET)`: a private mount table and a fresh, empty network
//!    namespace for the process (threads inherit both).
//! 3. Remounts `/` recursively private, so no mount made inside propagates to the host, then mounts a
//!    tmpfs on `/run`: named namespaces are bind-mounted under `/run/netns` (what `ip netns` and
//!    the proxy's netns-path tokens expect) and the xtables lock (`/run/xtables.lock`) is private.
//!
//! # Why everything vanishes
//!
//! The mount namespace belongs to this process alone. When the process exits — normally, by panic,
//! by SIGINT/SIGTERM's default action or by SIGKILL — the kernel drops the mount namespace, hence
//! every bind mount of a namespace file, hence (with the worker threads gone) the last reference to
//! each network namespace, which destroys its links, addresses, routes, rules and conntrack table.
//! Processes the harness spawns carry `PR_SET_PDEATHSIG(SIGKILL)` towards the thread that spawned
//! them (see [`crate::netns`]), so they cannot outlive it and pin a namespace. No signal handler is
//! installed: default termination *is* the cleanup. The `cleanup` test target proves it from the
//! outside.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Uid, getegid, geteuid};

/// How the sandbox got its privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SandboxMode {
    /// An unprivileged user in a user namespace of its own (no host privilege at all).
    Rootless,
    /// Real root, confined to a user namespace of its own like an unprivileged user.
    RootInUserNamespace,
    /// Real root without a user namespace (the kernel refused one): mount and network namespaces
    /// still isolate the harness, but it runs with host capabilities.
    Root,
}

impl std::fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SandboxMode::Rootless => "rootless (user namespace)",
            SandboxMode::RootInUserNamespace => "root, confined to a user namespace",
            SandboxMode::Root => "root without a user namespace (the kernel refused one)",
        })
    }
}

/// Why [`Sandbox::enter`] failed. Each variant says which step failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The process already has more than one thread.
    #[error(
        "the namespace sandbox must be entered while the process has one thread, but it has {threads}: \
         call Sandbox::enter first thing in main, before any tokio runtime, thread pool or test \
         harness thread exists (integration tests that need it use `harness = false`)"
    )]
    NotSingleThreaded {
        /// Threads counted in `/proc/self/status`.
        threads: usize,
    },
    /// `enter` was called twice.
    #[error("the namespace sandbox was already entered by this process")]
    AlreadyEntered,
    /// The kernel refused the user namespace and the caller is not root.
    #[error(
        "unshare(CLONE_NEWUSER) failed: {errno} — this process may not create a user namespace. \
         Usual causes: unprivileged user namespaces are disabled (sysctl \
         kernel.unprivileged_userns_clone=1; on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0), \
         the limit is reached (ENOSPC: user.max_user_namespaces), or the process runs chrooted or in \
         a container whose seccomp profile forbids it. Fix one of those, or run the tests as root"
    )]
    UserNamespace {
        /// What the kernel said.
        errno: Errno,
    },
    /// Writing the uid/gid map of the new user namespace failed.
    #[error("writing {path} failed: {source}")]
    IdMap {
        /// `/proc/self/uid_map`, `gid_map` or `setgroups`.
        path: &'static str,
        /// The I/O error.
        source: io::Error,
    },
    /// `unshare(CLONE_NEWNS | CLONE_NEWNET)` failed.
    #[error(
        "unshare(CLONE_NEWNS | CLONE_NEWNET) failed: {errno} — the process lacks CAP_SYS_ADMIN and \
         CAP_NET_ADMIN in its user namespace (run as root, or where unprivileged user namespaces \
         are allowed)"
    )]
    MountNetNamespace {
        /// What the kernel said.
        errno: Errno,
    },
    /// A mount step failed.
    #[error("{what} failed: {errno}")]
    Mount {
        /// Which mount, in words.
        what: &'static str,
        /// What the kernel said.
        errno: Errno,
    },
    /// Reading namespace ids or creating the directory for namespace bind mounts failed.
    #[error("{path}: {source}")]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// Proof that the process is inside its own user + mount + network namespaces. Pass it to
/// [`crate::netns::Netns::create`]; there is at most one per process.
#[derive(Debug)]
pub struct Sandbox {
    mode: SandboxMode,
    netns_dir: PathBuf,
    origin: NamespaceIds,
}

/// Inode numbers of a process's namespaces (what `readlink /proc/self/ns/*` shows), to tell
/// namespaces apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NamespaceIds {
    /// `ns/user`.
    pub user: u64,
    /// `ns/mnt`.
    pub mnt: u64,
    /// `ns/net`.
    pub net: u64,
}

impl NamespaceIds {
    /// The calling thread's namespaces.
    pub fn current() -> io::Result<NamespaceIds> {
        Ok(NamespaceIds {
            user: ns_inode("/proc/thread-self/ns/user")?,
            mnt: ns_inode("/proc/thread-self/ns/mnt")?,
            net: ns_inode("/proc/thread-self/ns/net")?,
        })
    }
}

/// The inode number of a namespace file (`/proc/…/ns/net`, or a bind mount of one).
pub fn ns_inode(path: impl AsRef<Path>) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    fs::metadata(path).map(|m| m.ino())
}

static ENTERED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Where named namespaces are bind-mounted (inside the sandbox's private tmpfs on `/run`).
pub const NETNS_DIR: &str = "/run/netns";

impl Sandbox {
    /// Enters the sandbox. Call it first thing in `main`, before any other thread exists.
    pub fn enter() -> Result<Sandbox, SandboxError> {
        let threads = thread_count();
        if threads != 1 {
            return Err(SandboxError::NotSingleThreaded { threads });
        }
        if ENTERED.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(SandboxError::AlreadyEntered);
        }
        let origin = NamespaceIds::current().map_err(|source| SandboxError::RunDir {
            path: "/proc/thread-self/ns".into(),
            source,
        })?;
        let (uid, gid) = (geteuid(), getegid());
        let mode = match unshare(CloneFlags::CLONE_NEWUSER) {
            Ok(()) => {
                write_id_maps(uid, gid)?;
                if uid.is_root() { SandboxMode::RootInUserNamespace } else { SandboxMode::Rootless }
            }
            Err(_) if uid.is_root() => SandboxMode::Root,
            Err(errno) => return Err(SandboxError::UserNamespace { errno }),
        };
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
            .map_err(|errno| SandboxError::MountNetNamespace { errno })?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|errno| SandboxError::Mount { what: "making / recursively private", errno })?;
        mount(
            Some("tmpfs"),
            "/run",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        )
        .map_err(|errno| SandboxError::Mount { what: "mounting a private tmpfs on /run", errno })?;
        let netns_dir = PathBuf::from(NETNS_DIR);
        fs::create_dir_all(&netns_dir)
            .map_err(|source| SandboxError::RunDir { path: netns_dir.clone(), source })?;
        Ok(Sandbox { mode, netns_dir, origin })
    }

    /// How the sandbox got its privileges.
    pub fn mode(&self) -> SandboxMode {
        self.mode
    }

    /// The namespaces the process was in before entering the sandbox (the host's, usually).
    pub fn origin(&self) -> NamespaceIds {
        self.origin
    }

    /// The directory where named namespaces are bind-mounted.
    pub fn netns_dir(&self) -> &Path {
        &self.netns_dir
    }
}

/// Threads of this process, from `/proc/self/status` (0 if it cannot be read, which then fails the
/// single-thread check loudly rather than risking `unshare` on a threaded process).
pub fn thread_count() -> usize {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Threads:").and_then(|n| n.trim().parse().ok()))
        })
        .unwrap_or(0)
}

fn write_id_maps(uid: Uid, gid: Gid) -> Result<(), SandboxError> {
    // setgroups must be denied before an unprivileged process may write gid_map.
    let steps: [(&'static str, String); 3] = [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1")),
        ("/proc/self/gid_map", format!("0 {gid} 1")),
    ];
    for (path, content) in steps {
        fs::write(path, content).map_err(|source| SandboxError::IdMap { path, source })?;
    }
    Ok(())
}
