//! Tracing costs nothing when it is off: the untraced packet paths do not allocate. A counting
//! global allocator (this test binary only) watches established and first-packet traversals of
//! the reference rules, after warm-up so the conntrack table has its capacity.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ambient_kernel::{Netns, NoSockets, Packet, RestoreOptions, TcpFlags, Trace};
use ambient_scenarios::rules::{InpodRules, PolicyRouting};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; it only counts allocations.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

#[test]
fn untraced_paths_do_not_allocate() {
    let mut n = Netns::new();
    n.ip("addr add 10.0.1.5/24 dev eth0").unwrap();
    n.ip("route add default via 10.0.1.1 dev eth0").unwrap();
    for cmd in PolicyRouting::default().ip_commands() {
        n.ip(&cmd).unwrap();
    }
    n.restore(
        &InpodRules::default().restore_text(),
        RestoreOptions { noflush: true, counters: false },
    )
    .unwrap();
    let eth0 = n.interface("eth0").unwrap();
    let now = Duration::from_secs(1);
    let app = |i: u16| SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 5), 20_000 + i);
    let remote = |i: u16| SocketAddrV4::new(Ipv4Addr::new(10, 64, (i >> 8) as u8, i as u8), 80);
    let peer = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 7), 40_000);
    let local = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 5), 15008);

    // Warm up: connections and table capacity for 2,000 more, then flush (capacity stays).
    for i in 0..2_000 {
        n.output(Packet::tcp(app(i), remote(i), TcpFlags::S), None, now, &NoSockets);
    }
    n.flush_conntrack();
    let syn = Packet::tcp(app(0), remote(0), TcpFlags::S);
    let o = n.output(syn, None, now, &NoSockets);
    n.output(
        Packet::tcp(o.packet.dst_sock(), o.packet.src_sock(), TcpFlags::SA),
        None,
        now,
        &NoSockets,
    );
    n.input(Packet::tcp(peer, local, TcpFlags::S), eth0, now, &NoSockets);
    n.output(Packet::tcp(local, peer, TcpFlags::SA), None, now, &NoSockets);

    let before = allocations();
    for _ in 0..1_000 {
        let o = n.output(Packet::tcp(app(0), remote(0), TcpFlags::A), None, now, &NoSockets);
        assert!(o.is_local());
        let o = n.input(Packet::tcp(peer, local, TcpFlags::A), eth0, now, &NoSockets);
        assert!(o.is_local());
    }
    for i in 1..1_000 {
        let o = n.output(Packet::tcp(app(i), remote(i), TcpFlags::S), None, now, &NoSockets);
        assert!(o.is_local());
    }
    assert_eq!(allocations() - before, 0, "the untraced path allocated");

    // With a trace it does allocate (the check above can fail).
    let mut trace = Trace::default();
    let before = allocations();
    n.output_traced(Packet::tcp(app(0), remote(0), TcpFlags::A), None, now, &NoSockets, &mut trace);
    assert!(allocations() > before);
}
