//! The child side of the `scenario_*` cleanup cases: a scenario on the netns backend that fails
//! midway.
//!
//! A watcher thread records every namespace the run creates (the files in `/run/netns`) and,
//! once all of them exist, reports them (`READY …`) so the parent can see them from the host.
//! The run then fails the stated way: an injected failed step (the backend returns an error) or
//! panic (caught here), or the parent's SIGINT/SIGKILL during a long `wait`. For the first two
//! the child checks, before it exits, that the backend already tore everything down
//! in-process — counted before and after: namespaces referenced by any process (none of the
//! run's left), entries in `/run/netns`, this process's threads, the links of the sandbox's
//! own namespace — and exits 3 with the difference if not. `leak` keeps one namespace open
//! behind the backend's back: that check must then fail.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambient_netns::backend::{Injected, NetnsBackend};
use ambient_netns::sandbox::{NETNS_DIR, Sandbox, ns_inode, thread_count};
use ambient_netns::testkit::referenced_net_namespaces;
use ambient_scenarios::{Backend, RunOptions, load_str};

/// Namespaces the scenario makes: wan, two nodes, one external host, two pods.
pub const NAMESPACES: usize = 6;

/// Step 0 puts delay lines (tasks bound to NFQUEUE queues in both node namespaces) on the link,
/// so the run fails with them live. Step 3 waits: long enough for the parent to look (and, for
/// the signal cases, to signal).
const SCENARIO: &str = r#"
description: fails midway
cluster:
  nodes: [node-a, node-b]
  pods:
    - {name: client, node: node-a, ambient: true}
    - {name: server, node: node-b, ambient: true, labels: {app: echo}, serve: [{port: 8080, app: echo}]}
  external:
    - {name: web, ip: 203.0.113.10, serve: [{port: 443, app: echo}]}
steps:
  - fault: {latency: {between: [node-a, node-b], add: 5ms}}
  - connect: {id: first, from: client, to: server:8080}
  - connect: {id: held, from: client, to: server:8080, hold: 60s, background: true}
  - wait: WAIT
  - connect: {id: never, from: client, to: web:443}
"#;

/// The step the injected failure replaces: the last one, after the wait.
const FAILS_AT: usize = 4;

/// What is counted before and after.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Counts {
    netns_files: usize,
    threads: usize,
    sandbox_links: String,
}

fn counts() -> Counts {
    Counts {
        netns_files: std::fs::read_dir(NETNS_DIR).map(|d| d.count()).unwrap_or(usize::MAX),
        threads: thread_count(),
        sandbox_links: std::fs::read_to_string("/proc/self/net/dev")
            .unwrap_or_default()
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(str::trim)
            .collect::<Vec<_>>()
            .join(","),
    }
}

pub fn child(how: &str) -> ExitCode {
    let sandbox = match Sandbox::enter() {
        Ok(s) => s,
        Err(e) => {
            println!("CHILD-ERROR {e}");
            return ExitCode::from(3);
        }
    };
    let wait = if matches!(how, "sigint" | "sigkill") { "60s" } else { "2s" };
    let world = match load_str("fails-midway.yaml", &SCENARIO.replace("WAIT", wait)).into_result() {
        Ok(w) => w,
        Err(d) => {
            println!("CHILD-ERROR {d:?}");
            return ExitCode::from(3);
        }
    };
    let before = counts();
    let seen: Arc<Mutex<BTreeSet<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (seen, stop, leak) = (seen.clone(), stop.clone(), how == "leak");
        std::thread::spawn(move || watch_namespaces(&seen, &stop, leak))
    };
    let mut backend = NetnsBackend::new(&sandbox);
    backend = match how {
        "error" => backend.inject(FAILS_AT, Injected::Error),
        "panic" => backend.inject(FAILS_AT, Injected::Panic),
        "leak" => backend.inject(FAILS_AT, Injected::Error),
        _ => backend,
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        backend.run(&world, &RunOptions::default())
    }));
    stop.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    let made = seen.lock().map(|s| s.clone()).unwrap_or_default();
    if let Err(e) = torn_down(&before, &made) {
        eprintln!("cleanup child: the backend did not tear down in-process: {e}");
        return ExitCode::from(3);
    }
    match result {
        Ok(Err(e)) => {
            eprintln!("cleanup child: the run failed as intended: {e}");
            ExitCode::from(1)
        }
        Ok(Ok(_)) => ExitCode::from(4),
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// Records the namespaces of the run; reports them once all exist. With `leak`, also keeps one
/// of them open for good, which the in-process check must catch.
fn watch_namespaces(seen: &Mutex<BTreeSet<u64>>, stop: &AtomicBool, leak: bool) {
    use std::os::unix::fs::MetadataExt as _;
    let nsfs = std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev());
    let mut reported = false;
    while !stop.load(Ordering::SeqCst) {
        // Only mounted namespaces: a file just created for a mount is still a plain file.
        let now: BTreeSet<u64> = std::fs::read_dir(NETNS_DIR)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::metadata(e.path()).ok())
                    .filter(|m| Some(m.dev()) == nsfs)
                    .map(|m| m.ino())
                    .collect()
            })
            .unwrap_or_default();
        let all = {
            let Ok(mut seen) = seen.lock() else { return };
            seen.extend(&now);
            seen.clone()
        };
        if !reported && now.len() == NAMESPACES {
            reported = true;
            if leak {
                let first = std::fs::read_dir(NETNS_DIR).ok().and_then(|mut d| d.next());
                if let Some(Ok(entry)) = first {
                    std::mem::forget(std::fs::File::open(entry.path()));
                }
            }
            let mut netns: Vec<u64> = all.into_iter().collect();
            netns.extend(ns_inode("/proc/self/ns/net").ok());
            let report = serde_json::json!({
                "netns": netns,
                "pids": [std::process::id()],
                "links": [],
            });
            println!("READY {report}");
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) until nothing of the run is left; says what is, if something is.
fn torn_down(before: &Counts, made: &BTreeSet<u64>) -> Result<(), String> {
    if made.len() < NAMESPACES {
        return Err(format!("only {} namespaces were seen during the run", made.len()));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = counts();
        let left: Vec<u64> = referenced_net_namespaces().intersection(made).copied().collect();
        if left.is_empty() && now == *before {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "5 s after the run: namespaces {left:?} still referenced; before {before:?}, now {now:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
