//! Named network namespaces inside the [`Sandbox`], each with one worker thread running a
//! current-thread tokio runtime *in* that namespace.
//!
//! A socket belongs to the network namespace of the thread that creates it, and a process to the
//! namespace of the thread that forks it. So everything that must happen "in" a namespace — creating
//! sockets, opening rtnetlink, spawning `iptables-restore`, writing `/proc/sys/net/...` — is sent
//! to its worker thread as a job ([`Netns::spawn`], [`Netns::run`], [`Netns::run_blocking`]).
//! Jobs run as local tasks on that thread, concurrently with one another; a job may itself
//! `tokio::task::spawn_local` background tasks (listeners) that live until the namespace is dropped.
//! Do not call `spawn_blocking` in a job: the blocking pool's threads are not pinned to the netns.
//!
//! Every namespace is reachable by a path, `/run/netns/<name>` (a bind mount of the worker thread's
//! `/proc/thread-self/ns/net`), for as long as the [`Netns`] value lives: that path is the token
//! other code (the proxy's Linux socket layer) opens and `setns`es into.
//!
//! Dropping a [`Netns`] stops its worker (cancelling its tasks, killing processes it spawned that
//! still run), then detaches the bind mount and removes the file. The kernel destroys the namespace
//! once nothing else (a socket moved out of a job, another process) refers to it.

use std::fs::{self, OpenOptions};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread;

use futures_util::FutureExt as _;
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use tokio::sync::{mpsc, oneshot};

use crate::sandbox::Sandbox;

/// A unit of work sent to a worker thread: builds a (non-`Send`) future there.
type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// Why a namespace could not be created or a job did not complete.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is not usable as a file name under `/run/netns`.
    #[error(
        "invalid namespace name {name:?}: use 1-64 characters from [A-Za-z0-9_.-], not starting with '.'"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// A namespace of that name already exists in this sandbox.
    #[error("namespace {name:?} already exists at {}", path.display())]
    Exists {
        /// The name.
        name: String,
        /// Its path.
        path: PathBuf,
    },
    /// A setup step on the worker thread failed.
    #[error("creating namespace {name:?}: {step} failed: {detail}")]
    Setup {
        /// The name.
        name: String,
        /// Which step (`unshare(CLONE_NEWNET)`, the bind mount, the runtime).
        step: &'static str,
        /// What the kernel or library said.
        detail: String,
    },
    /// The worker thread could not be started.
    #[error("starting the worker thread of namespace {name:?}: {source}")]
    Thread {
        /// The name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A job panicked; the message is the panic payload.
    #[error("a job in namespace {name:?} panicked: {message}")]
    JobPanicked {
        /// The namespace.
        name: String,
        /// The panic payload, if it was a string.
        message: String,
    },
    /// The namespace was shut down before the job finished (or before it started).
    #[error("namespace {name:?} shut down before the job finished")]
    Cancelled {
        /// The namespace.
        name: String,
    },
}

/// A named network namespace with its worker thread. See the module docs.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    jobs: Option<mpsc::UnboundedSender<Job>>,
    worker: Option<thread::JoinHandle<()>>,
}

/// The result of a job, to `.await` from async code or [`JobHandle::wait`] for from plain threads.
#[derive(Debug)]
pub struct JobHandle<T> {
    name: String,
    rx: oneshot::Receiver<Result<T, String>>,
}

impl Netns {
    /// Creates a fresh, empty network namespace (only a down `lo`), bind-mounted at
    /// `<sandbox.netns_dir()>/<name>`, with its worker thread running.
    pub fn create(sandbox: &Sandbox, name: &str) -> Result<Netns, NetnsError> {
        validate_name(name)?;
        let path = sandbox.netns_dir().join(name);
        if path.exists() {
            return Err(NetnsError::Exists { name: name.to_string(), path });
        }
        let (jobs_tx, jobs_rx) = mpsc::unbounded_channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), NetnsError>>();
        let worker = {
            let (worker_name, path) = (name.to_string(), path.clone());
            thread::Builder::new()
                .name(format!("netns-{name}"))
                .spawn(move || worker_main(worker_name, path, ready_tx, jobs_rx))
                .map_err(|source| NetnsError::Thread { name: name.to_string(), source })?
        };
        let ready = ready_rx.recv().unwrap_or_else(|_| {
            Err(NetnsError::Setup {
                name: name.to_string(),
                step: "worker start",
                detail: "the worker thread exited during setup".into(),
            })
        });
        if let Err(err) = ready {
            let _ = worker.join();
            return Err(err);
        }
        Ok(Netns { name: name.to_string(), path, jobs: Some(jobs_tx), worker: Some(worker) })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's path (`/run/netns/<name>` inside the sandbox): open it and `setns` a thread
    /// to enter the namespace. Valid as long as this value lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends a job: `make` runs on the worker thread and returns the future to run there (which may
    /// hold non-`Send` state such as sockets). Returns at once; the job runs concurrently with the
    /// namespace's other jobs.
    pub fn spawn<F, Fut, T>(&self, make: F) -> JobHandle<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let result = AssertUnwindSafe(async move { make().await })
                    .catch_unwind()
                    .await
                    .map_err(|payload| panic_message(&*payload));
                let _ = tx.send(result);
            })
        });
        if let Some(jobs) = &self.jobs {
            // A send error drops the job and with it `tx`, which the handle reports as cancelled.
            let _ = jobs.send(job);
        }
        JobHandle { name: self.name.clone(), rx }
    }

    /// Runs an async job to completion, blocking the calling (non-async) thread.
    pub fn run<F, Fut, T>(&self, make: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        self.spawn(make).wait()
    }

    /// Runs a synchronous closure on the worker thread (for syscalls that must be made from inside
    /// the namespace). It blocks the namespace's other tasks while it runs: keep it short.
    pub fn run_blocking<F, T>(&self, f: F) -> Result<T, NetnsError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.run(move || async move { f() })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        // The worker is gone; the bind mount is the last reference we hold.
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        let _ = fs::remove_file(&self.path);
    }
}

impl<T> JobHandle<T> {
    /// A handle whose job never runs (it reports [`NetnsError::Cancelled`]).
    pub fn detached() -> JobHandle<T> {
        let (_, rx) = oneshot::channel();
        JobHandle { name: String::new(), rx }
    }

    /// The job's result if it has finished, without waiting; `None` while it runs. Once taken,
    /// later calls report the job as cancelled.
    pub fn try_take(&mut self) -> Option<Result<T, NetnsError>> {
        use tokio::sync::oneshot::error::TryRecvError;
        let taken = match self.rx.try_recv() {
            Err(TryRecvError::Empty) => return None,
            done => done,
        };
        // A receiver that has given its last answer (value or closed) panics if received from
        // again (`wait` after `try_take`): swap in a fresh one whose sender is gone.
        self.rx = oneshot::channel().1;
        Some(match taken {
            Ok(result) => result
                .map_err(|message| NetnsError::JobPanicked { name: self.name.clone(), message }),
            Err(_) => Err(NetnsError::Cancelled { name: self.name.clone() }),
        })
    }

    /// Blocks the calling thread until the job finishes. Must not be called from async code (it
    /// panics inside a tokio runtime); `.await` the handle there.
    pub fn wait(self) -> Result<T, NetnsError> {
        let name = self.name;
        match self.rx.blocking_recv() {
            Ok(result) => result.map_err(|message| NetnsError::JobPanicked { name, message }),
            Err(_) => Err(NetnsError::Cancelled { name }),
        }
    }
}

impl<T> Future for JobHandle<T> {
    type Output = Result<T, NetnsError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(value))) => Poll::Ready(Ok(value)),
            Poll::Ready(Ok(Err(message))) => {
                Poll::Ready(Err(NetnsError::JobPanicked { name: self.name.clone(), message }))
            }
            Poll::Ready(Err(_)) => {
                Poll::Ready(Err(NetnsError::Cancelled { name: self.name.clone() }))
            }
        }
    }
}

fn validate_name(name: &str) -> Result<(), NetnsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok { Ok(()) } else { Err(NetnsError::InvalidName { name: name.to_string() }) }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// The worker thread: move into a new netns, publish it at `path`, then run jobs until the
/// sender side is dropped.
fn worker_main(
    name: String,
    path: PathBuf,
    ready: std::sync::mpsc::Sender<Result<(), NetnsError>>,
    mut jobs: mpsc::UnboundedReceiver<Job>,
) {
    let setup_err =
        |step: &'static str, detail: String| NetnsError::Setup { name: name.clone(), step, detail };
    let runtime = (|| {
        unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| setup_err("unshare(CLONE_NEWNET) on the worker thread", e.to_string()))?;
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| setup_err("creating the mount point", e.to_string()))?;
        if let Err(e) = mount(
            Some("/proc/thread-self/ns/net"),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ) {
            let _ = fs::remove_file(&path);
            return Err(setup_err("bind-mounting /proc/thread-self/ns/net", e.to_string()));
        }
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
            let _ = umount2(&path, MntFlags::MNT_DETACH);
            let _ = fs::remove_file(&path);
            setup_err("building the tokio runtime", e.to_string())
        })
    })();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        while let Some(job) = jobs.recv().await {
            tokio::task::spawn_local(job());
        }
    });
    // Dropping `local` cancels the tasks still running (listeners, unfinished jobs) and with them
    // any child process they own (spawned with kill_on_drop).
    drop(local);
    drop(runtime);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_after_taking_the_result_reports_cancelled_instead_of_panicking() {
        let (tx, rx) = oneshot::channel::<Result<u8, String>>();
        let mut job = JobHandle { name: "ztunnel".into(), rx };
        assert!(job.try_take().is_none());
        tx.send(Ok(7)).unwrap();
        assert!(matches!(job.try_take(), Some(Ok(7))));
        assert!(matches!(job.try_take(), Some(Err(NetnsError::Cancelled { .. }))));
        assert!(matches!(job.wait(), Err(NetnsError::Cancelled { .. })));
    }
}
