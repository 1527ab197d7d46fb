//! Nothing the sandbox creates outlives it — after a panic midway, a failed step, SIGINT or
//! SIGKILL. Proved from the outside.
//!
//! The test process stays on the host and starts itself again as a child (`CLEANUP_CHILD=<how>`).
//! The child enters the sandbox and gets half-way through a case: two namespaces, a veth pair,
//! rules loaded, a listener and an open connection, a `sleep` process started in a namespace.
//! It reports what it made (namespace inodes, pids, link names), waits for the word, then fails
//! the stated way. Before, during and after, the parent scans every process it can see for
//! references to network namespaces — threads' `ns/net`, open `net:[…]` files, `nsfs` mounts,
//! which is everything by which user space keeps a network namespace alive — and checks:
//! during, the scan sees every namespace the child made (so the scan works); after, it sees none,
//! the child's processes are gone, and no link of the child's ever appeared on the host.
//!
//! The `scenario_*` cases do the same with a whole scenario on the netns backend, failing
//! midway (an injected failed step or panic, SIGINT, SIGKILL): the child itself also checks,
//! before exiting, that the backend tore everything down in-process (see `cleanup/scenario.rs`).
//!
//! `harness = false` so the child can enter the sandbox single-threaded:
//! `cargo test -p ambient-netns --test cleanup`.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, ChildStdout, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ambient_netns::link::Route;
use ambient_netns::netns::Netns;
use ambient_netns::sandbox::{Sandbox, ns_inode};
use ambient_netns::socket::{self, ConnectOptions, ListenOptions};
use ambient_netns::testkit::{Suite, referenced_net_namespaces};
use anyhow::{Context as _, bail, ensure};

const CHILD_ENV: &str = "CLEANUP_CHILD";

#[path = "cleanup/scenario.rs"]
mod scenario;

fn main() -> ExitCode {
    if let Ok(how) = std::env::var(CHILD_ENV) {
        return child(&how);
    }
    Suite::on_host("cleanup (watched from the host)")
        .case("cleanup::after_a_panic_midway", |_| Ok(watch("panic", Exit::Code(101))?))
        .case("cleanup::after_a_failed_step", |_| Ok(watch("failed-step", Exit::Code(1))?))
        .case("cleanup::after_sigint", |_| Ok(watch("sigint", Exit::Signal(nix::libc::SIGINT))?))
        .case("cleanup::after_sigkill", |_| Ok(watch("sigkill", Exit::Signal(nix::libc::SIGKILL))?))
        .case("cleanup::the_watch_catches_a_leak", |_| Ok(watch_catches_a_leak()?))
        .case("cleanup::scenario_after_a_failed_step", |_| {
            Ok(watch("scenario-error", Exit::Code(1))?)
        })
        .case("cleanup::scenario_after_a_panic_midway", |_| {
            Ok(watch("scenario-panic", Exit::Code(101))?)
        })
        .case("cleanup::scenario_teardown_check_catches_a_leak", |_| {
            Ok(watch("scenario-leak", Exit::Code(3))?)
        })
        .case("cleanup::scenario_after_sigint", |_| {
            Ok(watch("scenario-sigint", Exit::Signal(nix::libc::SIGINT))?)
        })
        .case("cleanup::scenario_after_sigkill", |_| {
            Ok(watch("scenario-sigkill", Exit::Signal(nix::libc::SIGKILL))?)
        })
        .run()
}

// ---- the child: gets half-way through a case inside the sandbox, then fails ----

fn child(how: &str) -> ExitCode {
    if let Some(how) = how.strip_prefix("scenario-") {
        return scenario::child(how);
    }
    let sandbox = match Sandbox::enter() {
        Ok(s) => s,
        Err(e) => {
            println!("CHILD-ERROR {e}");
            return ExitCode::from(3);
        }
    };
    match child_setup(&sandbox) {
        Err(e) => {
            println!("CHILD-ERROR {e:#}");
            ExitCode::from(3)
        }
        Ok((a, b, _sleep)) => {
            if how == "leak" {
                // A process started without the harness's death signal: it outlives the child,
                // holding namespace b — what the watch must catch.
                let leaked =
                    b.run_blocking(|| std::process::Command::new("sleep").arg("600").spawn());
                match leaked {
                    Ok(Ok(leaked)) => println!("LEAKED {}", leaked.id()),
                    other => println!("CHILD-ERROR could not start the leak: {other:?}"),
                }
            } else {
                println!("NO-LEAK");
            }
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line); // the word
            match how {
                "panic" | "leak" => {
                    panic!("cleanup test: a deliberate panic midway through a case")
                }
                "failed-step" => {
                    match a.iptables_restore("*nat\n-A NO_SUCH_CHAIN -j ACCEPT\nCOMMIT\n", false) {
                        Err(e) => {
                            eprintln!("cleanup child: step failed as intended: {e}");
                            ExitCode::from(1)
                        }
                        Ok(()) => ExitCode::from(4),
                    }
                }
                // Wait for the parent's signal.
                _ => loop {
                    std::thread::sleep(Duration::from_secs(60));
                },
            }
        }
    }
}

type Made = (Netns, Netns, ambient_netns::tools::ProcessHandle);

fn child_setup(sandbox: &Sandbox) -> anyhow::Result<Made> {
    let a = Netns::create(sandbox, "cleanup-a")?;
    let b = Netns::create(sandbox, "cleanup-b")?;
    let id = std::process::id() % 1_000_000;
    let (link_a, link_b) = (format!("cl{id}a"), format!("cl{id}b"));
    let (la, lb, b_path) = (link_a.clone(), link_b.clone(), b.path().to_path_buf());
    a.rtnl(move |rt| async move {
        rt.add_veth(&la, &lb, &b_path).await?;
        rt.add_address(&la, [10, 9, 0, 1].into(), 24).await?;
        rt.set_up(&la, true).await?;
        rt.set_up("lo", true).await?;
        rt.add_route(&Route::via([0, 0, 0, 0].into(), 0, [10, 9, 0, 2].into())).await
    })?;
    let lb = link_b.clone();
    b.rtnl(move |rt| async move {
        rt.add_address(&lb, [10, 9, 0, 2].into(), 24).await?;
        rt.set_up(&lb, true).await
    })?;
    a.iptables_restore(
        "*nat\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -p tcp --dport 80 -j REDIRECT --to-ports 8080\nCOMMIT\n",
        false,
    )?;
    // A listener and a connection held open through it, both living in namespace a's worker.
    let addr = std::net::SocketAddrV4::new([127, 0, 0, 1].into(), 8080);
    let listener = a.run_blocking(move || socket::listen(addr, ListenOptions::default()))??;
    drop(a.spawn(move || async move {
        let accepted = listener.accept().await;
        std::future::pending::<()>().await;
        drop(accepted);
    }));
    let target = std::net::SocketAddrV4::new([10, 9, 0, 1].into(), 80);
    drop(a.spawn(move || async move {
        let stream = socket::connect(target, &ConnectOptions::default()).await;
        std::future::pending::<()>().await;
        drop(stream);
    }));
    let sleep = b.start_process("sleep", &["600"])?;
    let report = serde_json::json!({
        "netns": [
            ns_inode("/proc/self/ns/net")?,
            ns_inode(a.path())?,
            ns_inode(b.path())?,
        ],
        "pids": [std::process::id(), sleep.pid()],
        "links": [link_a, link_b],
    });
    println!("READY {report}");
    std::io::stdout().flush()?;
    Ok((a, b, sleep))
}

// ---- the parent: watches from the host ----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(i32),
}

fn exit_of(status: ExitStatus) -> Option<Exit> {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().map(Exit::Code).or_else(|| status.signal().map(Exit::Signal))
}

#[derive(Debug, serde::Deserialize)]
struct Report {
    netns: Vec<u64>,
    pids: Vec<u32>,
    links: Vec<String>,
}

/// The watch is not vacuous: a child that leaks a process (and with it a namespace) fails it.
fn watch_catches_a_leak() -> anyhow::Result<()> {
    let result = watch("leak", Exit::Code(101));
    let leaked: Vec<u32> = LEAKED.lock().map(|mut l| std::mem::take(&mut *l)).unwrap_or_default();
    for pid in &leaked {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    ensure!(leaked.len() == 1, "the child reported no leaked process");
    match result {
        Err(e) if e.to_string().contains("still run") => Ok(()),
        Err(e) => bail!("the watch failed, but not on the leak: {e:#}"),
        Ok(()) => bail!("the watch passed although the child leaked process {leaked:?}"),
    }
}

static LEAKED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn watch(how: &str, expected: Exit) -> anyhow::Result<()> {
    let host_links_before = host_links()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, how)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the child")?;
    let result = watch_child(&mut child, how, expected, &host_links_before);
    if result.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}

fn watch_child(
    child: &mut Child,
    how: &str,
    expected: Exit,
    host_links_before: &BTreeSet<String>,
) -> anyhow::Result<()> {
    let stdout = child.stdout.take().context("child stdout")?;
    let report = read_report(stdout, child, how == "leak")?;
    if how.starts_with("scenario-") {
        // The sandbox's own namespace and every namespace of the run; the child alone.
        ensure!(
            report.netns.len() == 1 + scenario::NAMESPACES && report.pids.len() == 1,
            "{report:?}"
        );
    } else {
        let pids = if how == "leak" { 3 } else { 2 };
        ensure!(
            report.netns.len() == 3 && report.pids.len() == pids && report.links.len() == 2,
            "{report:?}"
        );
    }

    // During: the scan sees all of it, so "not seen" afterwards means something.
    let seen = referenced_net_namespaces();
    for ino in &report.netns {
        ensure!(
            seen.contains(ino),
            "while the child runs, the scan does not see its namespace net:[{ino}]"
        );
    }
    for pid in &report.pids {
        ensure!(alive(*pid), "process {pid} of the child is not running");
    }
    let host_links_now = host_links()?;
    for link in &report.links {
        ensure!(!host_links_now.contains(link), "the child's link {link} is in the host namespace");
    }

    // Fail the stated way.
    match how {
        "sigint" | "scenario-sigint" => {
            nix::sys::signal::kill(pid_of(child), nix::sys::signal::Signal::SIGINT)?
        }
        "sigkill" | "scenario-sigkill" => {
            nix::sys::signal::kill(pid_of(child), nix::sys::signal::Signal::SIGKILL)?
        }
        _ => writeln!(child.stdin.as_mut().context("child stdin")?, "go")?,
    }
    let status = wait_timeout(child, Duration::from_secs(10))?;
    ensure!(exit_of(status) == Some(expected), "child ended with {status}, expected {expected:?}");

    // After: nothing of it is left.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = referenced_net_namespaces();
        let left_ns: Vec<u64> = report.netns.iter().copied().filter(|n| seen.contains(n)).collect();
        let left_pids: Vec<u32> = report.pids.iter().copied().filter(|p| alive(*p)).collect();
        if left_ns.is_empty() && left_pids.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "5 s after the child ended, namespaces {left_ns:?} are still referenced (or a namespace \
                 created since reused the number) and processes {left_pids:?} still run"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let host_links_after = host_links()?;
    let appeared: Vec<&String> =
        report.links.iter().filter(|l| host_links_after.contains(*l)).collect();
    ensure!(appeared.is_empty(), "links {appeared:?} appeared in the host namespace");
    let _ = host_links_before;
    Ok(())
}

fn pid_of(child: &Child) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(child.id() as i32)
}

fn read_report(stdout: ChildStdout, child: &mut Child, leak: bool) -> anyhow::Result<Report> {
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line?;
        if let Some(json) = line.strip_prefix("READY ") {
            let mut report: Report = serde_json::from_str(json)?;
            if leak && let Some(Ok(next)) = lines.next() {
                // The leak self-test's extra process counts as the child's.
                if let Some(pid) = next.strip_prefix("LEAKED ").and_then(|p| p.parse().ok()) {
                    report.pids.push(pid);
                    LEAKED.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(pid);
                }
            }
            // Keep draining stdout in the background so the child never blocks on it.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(report);
        }
        if let Some(err) = line.strip_prefix("CHILD-ERROR ") {
            let _ = child.wait();
            bail!("the child could not set up its namespaces: {err}");
        }
    }
    let status = child.wait()?;
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    bail!("the child ended ({status}) before reporting: {stderr}")
}

fn wait_timeout(child: &mut Child, limit: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(Instant::now() < deadline, "the child did not end within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Running (a zombie holds no namespace: it released them when it exited).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Link names of the host (the parent's) network namespace.
fn host_links() -> anyhow::Result<BTreeSet<String>> {
    let dev = std::fs::read_to_string("/proc/self/net/dev")?;
    Ok(dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect())
}
