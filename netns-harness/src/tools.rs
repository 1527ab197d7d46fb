//! Running the kernel's own tools (`iptables-restore`, `iptables-save`, `conntrack`) inside a
//! namespace, and writing `/proc/sys/net/...` there.
//!
//! The `*_in` functions must run on a namespace's worker thread (inside a [`Netns`] job): a process
//! forked there is in that namespace. The [`Netns`] methods below wrap them in a job. Every child
//! gets `PR_SET_PDEATHSIG(SIGKILL)` towards the worker thread and `kill_on_drop`, so none outlives
//! its namespace; a failing tool is an error that quotes its command line, exit status and stderr.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::netns::{Netns, NetnsError};

/// How long any single tool invocation may take before it is killed.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where tools are looked for besides `$PATH` (an unprivileged user's `$PATH` often lacks sbin).
const SBIN_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"];

/// A tool that did not do its job.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The program is not installed.
    #[error(
        "{program} not found in $PATH or {SBIN_DIRS:?}: install it (Debian: iptables, conntrack)"
    )]
    NotFound {
        /// The program name.
        program: String,
    },
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program path.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// The program ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// Program and arguments.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it printed on stderr (trimmed).
        stderr: String,
    },
    /// The program did not finish in [`TOOL_TIMEOUT`].
    #[error("`{command}` did not finish within {TOOL_TIMEOUT:?} and was killed")]
    TimedOut {
        /// Program and arguments.
        command: String,
    },
    /// Reading `/proc/sys` or writing it failed.
    #[error("sysctl {key}: {source}")]
    Sysctl {
        /// The key, dotted.
        key: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The job did not complete in the namespace.
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// What a successful tool printed.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

/// Finds `program` in `$PATH` or the sbin directories.
pub fn find_tool(program: &str) -> Result<PathBuf, ToolError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| ToolError::NotFound { program: program.to_string() })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    path.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// Runs `program args…` with `stdin` on the current thread's namespace and returns its output;
/// a non-zero exit is an error. Call from a namespace job.
pub async fn run_tool_in(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<ToolOutput, ToolError> {
    let path = find_tool(program)?;
    let command_line = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>();
    let command_line = command_line.join(" ");
    let mut command = tokio::process::Command::new(&path);
    command
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    die_with_spawning_thread(&mut command);
    let mut child = command
        .spawn()
        .map_err(|source| ToolError::Spawn { program: path.display().to_string(), source })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A tool that exits early closes its stdin; its exit status then tells what went wrong.
        let _ = pipe.write_all(input).await;
        drop(pipe);
    }
    let output = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| ToolError::TimedOut { command: command_line.clone() })?
        .map_err(|source| ToolError::Spawn { program: path.display().to_string(), source })?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        return Err(ToolError::Failed {
            command: command_line,
            status: output.status,
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(ToolOutput { stdout, stderr })
}

/// A long-running process started in a namespace with [`Netns::start_process`]. Its
/// `tokio::process::Child` lives in a task on the namespace's worker; dropping this handle kills it,
/// and so does dropping the namespace (or the process exiting in any way).
#[derive(Debug)]
pub struct ProcessHandle {
    pid: u32,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    exit: crate::netns::JobHandle<io::Result<ExitStatus>>,
}

impl ProcessHandle {
    /// The process id (in the host's pid namespace: the sandbox shares it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Kills the process (SIGKILL) and waits for it to be reaped.
    pub fn kill(mut self) -> Result<ExitStatus, ToolError> {
        drop(self.kill.take());
        let exit = std::mem::replace(&mut self.exit, crate::netns::JobHandle::detached());
        exit.wait()?
            .map_err(|source| ToolError::Spawn { program: format!("pid {}", self.pid), source })
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        drop(self.kill.take());
    }
}

/// Makes the child die (SIGKILL) when the thread that spawned it exits — the namespace's worker
/// thread — so no tool outlives the namespace or the sandbox process, even after SIGKILL.
#[allow(unsafe_code)]
pub(crate) fn die_with_spawning_thread(command: &mut tokio::process::Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child between fork and exec. It calls only prctl(2) and
    // getppid(2), which are async-signal-safe, and allocates nothing (errors are raw errno values),
    // so it cannot deadlock on a lock another thread held at fork time.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(|errno| io::Error::from_raw_os_error(errno as i32))?;
            // If the parent died between fork and prctl, the signal was never armed.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::from_raw_os_error(nix::libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Makes the child start in a mount namespace of its own with `file` bound over `target` (a
/// path the program reads and cannot be told otherwise, like ztunnel's `/etc/resolv.conf`).
/// Recursively private first, so the bind cannot propagate to the harness's mount namespace.
#[allow(unsafe_code)]
pub(crate) fn bind_in_own_mount_ns(
    command: &mut tokio::process::Command,
    file: &Path,
    target: &'static std::ffi::CStr,
) -> io::Result<()> {
    use std::ffi::{CStr, CString};
    use std::os::unix::ffi::OsStrExt as _;

    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, unshare};

    if !file.is_file() {
        return Err(io::Error::other(format!(
            "{} (to be mounted over {}) is missing",
            file.display(),
            target.to_string_lossy()
        )));
    }
    // Made here: the closure runs between fork and exec and must not allocate.
    let source = CString::new(file.as_os_str().as_bytes())
        .map_err(|_| io::Error::other(format!("{} has a NUL byte", file.display())))?;
    const ROOT: &CStr = c"/";
    const NONE: Option<&CStr> = None;
    let errno = |e: nix::errno::Errno| io::Error::from_raw_os_error(e as i32);
    // SAFETY: the closure runs in the forked child between fork and exec. It makes only the
    // unshare(2) and mount(2) system calls, on C strings made before the fork; it allocates
    // nothing and takes no lock, so it is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            unshare(CloneFlags::CLONE_NEWNS).map_err(errno)?;
            mount(NONE, ROOT, NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE).map_err(errno)?;
            mount(Some(source.as_c_str()), target, NONE, MsFlags::MS_BIND, NONE).map_err(errno)?;
            Ok(())
        });
    }
    Ok(())
}

/// `/proc/sys/...` path of a dotted sysctl key (`net.ipv4.conf.all.rp_filter`). Interface names
/// containing dots are not supported; pass the key with slashes instead.
fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') { key.to_string() } else { key.replace('.', "/") };
    Path::new("/proc/sys").join(rel.trim_start_matches('/'))
}

/// Writes a sysctl of the current thread's namespace (`/proc/sys/net` is per network namespace
/// and resolves against the calling thread). Call from a namespace job.
pub fn sysctl_write_in(key: &str, value: &str) -> Result<(), ToolError> {
    std::fs::write(sysctl_path(key), value)
        .map_err(|source| ToolError::Sysctl { key: key.to_string(), source })
}

/// Reads a sysctl of the current thread's namespace (trimmed). Call from a namespace job.
pub fn sysctl_read_in(key: &str) -> Result<String, ToolError> {
    std::fs::read_to_string(sysctl_path(key))
        .map(|s| s.trim().to_string())
        .map_err(|source| ToolError::Sysctl { key: key.to_string(), source })
}

impl Netns {
    /// Runs a tool in this namespace (see [`run_tool_in`]).
    pub fn tool(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<ToolOutput, ToolError> {
        let program = program.to_string();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let stdin = stdin.map(<[u8]>::to_vec);
        self.run(move || async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_tool_in(&program, &args, stdin.as_deref()).await
        })?
    }

    /// Starts `program args…` in this namespace and returns at once. Standard streams go to
    /// `/dev/null`. See [`ProcessHandle`].
    pub fn start_process(&self, program: &str, args: &[&str]) -> Result<ProcessHandle, ToolError> {
        let path = find_tool(program)?;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (pid_tx, pid_rx) = std::sync::mpsc::channel::<Result<u32, ToolError>>();
        let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
        let exit = self.spawn(move || async move {
            let mut command = tokio::process::Command::new(&path);
            command
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            die_with_spawning_thread(&mut command);
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(source) => {
                    let program = path.display().to_string();
                    let _ = pid_tx.send(Err(ToolError::Spawn { program, source }));
                    return Err(io::Error::other("not started"));
                }
            };
            let _ = pid_tx.send(Ok(child.id().unwrap_or(0)));
            tokio::select! {
                biased;
                status = child.wait() => status,
                _ = kill_rx => {
                    child.start_kill()?;
                    child.wait().await
                }
            }
        });
        let pid = pid_rx.recv().map_err(|_| {
            ToolError::Netns(NetnsError::Cancelled { name: self.name().to_string() })
        })??;
        Ok(ProcessHandle { pid, kill: Some(kill_tx), exit })
    }

    /// Writes a sysctl in this namespace.
    pub fn sysctl_write(&self, key: &str, value: &str) -> Result<(), ToolError> {
        let (key, value) = (key.to_string(), value.to_string());
        self.run_blocking(move || sysctl_write_in(&key, &value))?
    }

    /// Reads a sysctl in this namespace.
    pub fn sysctl_read(&self, key: &str) -> Result<String, ToolError> {
        let key = key.to_string();
        self.run_blocking(move || sysctl_read_in(&key))?
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_file_to_bind_is_an_error_before_any_fork() {
        let mut command = tokio::process::Command::new("/bin/true");
        let file = std::path::Path::new("/nonexistent/resolv.conf");
        let err = super::bind_in_own_mount_ns(&mut command, file, c"/etc/resolv.conf").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent/resolv.conf") && text.contains("/etc/resolv.conf"));
    }
}
