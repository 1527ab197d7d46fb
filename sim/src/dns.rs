//! DNS in the simulated cluster: the stub resolver's sockets in a client's namespace, the DNS
//! server app on the DNS server host, and the lookups a run made (assembled into the Outcome's
//! `resolutions` at the end, like connections).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambient_proxy::net::{ConnectOptions, ListenOptions, Listener, Network, UdpOptions};
use ambient_scenarios::BackendError;
use ambient_scenarios::assemble::{self, EventLog};
use ambient_scenarios::outcome::Resolution;
use ambient_scenarios::step_driver::LookupSlot;
use ambient_scenarios::traffic::dns::{QueryLog, ResolverSockets, serve_dns_tcp, serve_dns_udp};
use ambient_scenarios::world::{DNS_PORT, DnsZone};
use tokio::task::AbortHandle;

use crate::net::{SimNetwork, SimStream};
use crate::topology::NetnsId;
use crate::udp::SimDatagram;

/// A client's resolver sockets in namespace `netns`.
#[derive(Debug, Clone)]
pub struct SimResolver {
    pub net: SimNetwork,
    pub netns: NetnsId,
}

impl ResolverSockets for SimResolver {
    type Udp = SimDatagram;
    type Tcp = SimStream;

    async fn udp(&self, server: SocketAddr) -> io::Result<SimDatagram> {
        let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let opts = UdpOptions { mark: None, peer: Some(server) };
        self.net.bind_udp(&self.netns, any, &opts).await
    }

    async fn tcp(&self, server: SocketAddr) -> io::Result<(SimStream, SocketAddr)> {
        let s = self.net.connect(&self.netns, server, &ConnectOptions::default()).await?;
        let local = SocketAddr::V4(s.local());
        Ok((s, local))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Outcome's entries for every lookup, in order.
pub fn resolutions(lookups: &[LookupSlot], log: &EventLog, served: &QueryLog) -> Vec<Resolution> {
    let served = lock(served).clone();
    lookups.iter().map(|l| assemble::resolution(l.labels(), &l.report(), log, &served)).collect()
}

/// Starts the DNS server app in `netns` (UDP and TCP 53); its tasks go to `tasks`.
pub async fn start_server(
    net: &SimNetwork,
    netns: NetnsId,
    label: &str,
    zone: &DnsZone,
    log: &QueryLog,
    tasks: &Arc<Mutex<Vec<AbortHandle>>>,
) -> Result<(), BackendError> {
    let at = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DNS_PORT);
    let err =
        |e: io::Error| BackendError::new(format!("{label}: DNS server on port {DNS_PORT}: {e}"));
    let udp = net.bind_udp(&netns, at, &UdpOptions::default()).await.map_err(err)?;
    let mut tcp = net.listen(&netns, at, &ListenOptions::default()).await.map_err(err)?;
    let h = tokio::spawn(serve_dns_udp(udp, zone.clone(), log.clone()));
    lock(tasks).push(h.abort_handle());
    let (zone, log, served) = (zone.clone(), log.clone(), tasks.clone());
    let h = tokio::spawn(async move {
        while let Ok(acc) = tcp.accept().await {
            let (zone, log) = (zone.clone(), log.clone());
            let c =
                tokio::spawn(async move { serve_dns_tcp(acc.stream, acc.peer, &zone, &log).await });
            lock(&served).push(c.abort_handle());
        }
    });
    lock(tasks).push(h.abort_handle());
    Ok(())
}
