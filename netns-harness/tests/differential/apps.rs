//! The kernel executor's applications, replayed as state machines: each flow's client (connect,
//! write the header and payload, read the echo back, close in the stated order) and the echo
//! server behind every accepted connection (read the header, echo, close) — with the kernel
//! executor's time limits, and the errors its socket calls would return.

use std::net::SocketAddrV4;

use ambient_netns::conntrack::parse_list;
use ambient_netns::diff::case::{CloseOrder, CloseResult, ConnectResult, EchoResult, Side};
use ambient_netns::diff::kernel::{CLOSE_TIMEOUT, CONNECT_TIMEOUT, ECHO_TIMEOUT};
use ambient_netns::diff::observe::{ClientRecord, ServerRecord, observe};
use ambient_netns::iptables::Ruleset;
use ambient_netns::socket::ConnectErrorKind;

use super::super::tcp::{AppEvent, Seg, Tcb};
use super::{
    ClientPhase, Conn, Event, ModelError, ModelRun, Owner, Server, ServerPhase, WAKEUP, World,
    icmp_error_kind, index, is_local,
};

/// `AsyncWriteExt::shutdown` on a tokio `TcpStream`, as the kernel executor calls it: tokio
/// turns the kernel's ENOTCONN (the connection was already reset or closed) into success
/// (`TcpStream::shutdown_std`), so the executor never reports it.
fn shutdown_as_tokio(tcb: &mut Tcb, now: std::time::Duration) -> Result<Option<Seg>, &'static str> {
    match tcb.shutdown(now) {
        Err("ENOTCONN") => Ok(None),
        result => result,
    }
}

impl World<'_> {
    fn client_tcb(&mut self, flow: usize) -> Option<(Side, usize, &mut Tcb)> {
        let side = self.clients[flow].flow.from;
        let conn = self.clients[flow].conn?;
        Some((side, conn, &mut self.hosts[index(side)].sockets.conns[conn].tcb))
    }

    /// The client's socket is dropped: `close()` (a FIN where one is still due).
    fn client_drop(&mut self, flow: usize) {
        let now = self.now;
        let Some((side, conn, tcb)) = self.client_tcb(flow) else { return };
        if let Some(fin) = tcb.close(now) {
            self.emit(side, conn, fin);
        }
        self.sync_timers(side, conn);
    }

    /// Flow `flow`'s client: bind (port), route (source address), SYN.
    pub(super) fn start_client(&mut self, flow: usize) {
        let spec = self.clients[flow].flow.clone();
        let (side, mark, now) = (spec.from, spec.mark.unwrap_or(0), self.now);
        let host = &mut self.hosts[index(side)];
        // bind(0.0.0.0:0) allocates the port before connect.
        let port = spec.src_port.unwrap_or_else(|| host.ephemeral_port());
        self.clients[flow].local_port = Some(port);
        let src = match host.ns.source_for(*spec.dst.ip(), mark) {
            // A non-transparent socket may not take a source address that is not local (a
            // `local` route outside the local table names the destination itself).
            Ok(src) if is_local(&host.ns, src) => src,
            _ => return self.client_failed(flow, ConnectErrorKind::NetUnreachable),
        };
        let (tcb, syn) = Tcb::connect(SocketAddrV4::new(src, port), spec.dst, mark, now);
        host.sockets.conns.push(Conn {
            tcb,
            owner: Owner::Client(flow),
            server: None,
            timer_scheduled: 0,
            delack_scheduled: 0,
            queued: false,
            backlog: Vec::new(),
        });
        let conn = host.sockets.conns.len() - 1;
        self.clients[flow].conn = Some(conn);
        self.emit(side, conn, syn);
        self.sync_timers(side, conn);
        let phase = ClientPhase::Connecting;
        self.schedule(now + CONNECT_TIMEOUT, Event::ClientLimit { flow, phase });
    }

    pub(super) fn client_failed(&mut self, flow: usize, kind: ConnectErrorKind) {
        let c = &mut self.clients[flow];
        if c.phase != ClientPhase::Connecting {
            return;
        }
        c.connect = Some(ConnectResult::Failed(kind));
        c.phase = ClientPhase::Done;
        if let Some((_, _, tcb)) = self.client_tcb(flow) {
            tcb.discard();
        }
    }

    pub(super) fn client_event(&mut self, flow: usize, event: AppEvent) {
        let now = self.now;
        let Some((_, _, tcb)) = self.client_tcb(flow) else { return };
        let (received, local) = (tcb.received, tcb.local);
        let c = &mut self.clients[flow];
        match (event, c.phase) {
            (AppEvent::Connected, ClientPhase::Connecting) => {
                c.local = Some(local);
                self.schedule(now + WAKEUP, Event::ClientWake { flow });
            }
            (AppEvent::Reset, ClientPhase::Connecting) => c.pending_reset = true,
            (AppEvent::Refused, _) => self.client_failed(flow, ConnectErrorKind::Refused),
            (AppEvent::Data(_), ClientPhase::Echoing) if received >= c.sent => {
                c.echo = Some(EchoResult::Intact { bytes: c.sent });
                c.phase = ClientPhase::Waiting;
            }
            (AppEvent::Eof, ClientPhase::Echoing) => {
                let (got, sent) = (received.min(c.sent), c.sent);
                c.echo = Some(EchoResult::Short { got, sent, timed_out: false, error: None });
                c.phase = ClientPhase::Waiting;
            }
            (AppEvent::Reset, ClientPhase::Echoing) => {
                let (got, sent) = (received.min(c.sent), c.sent);
                let error = Some("ECONNRESET".to_string());
                c.echo = Some(EchoResult::Short { got, sent, timed_out: false, error });
                c.phase = ClientPhase::Waiting;
            }
            (AppEvent::Reset, ClientPhase::Waiting) => c.pending_reset = true,
            (AppEvent::Reset, ClientPhase::Closing) => {
                self.client_closed(flow, CloseResult::Error("ECONNRESET".into()))
            }
            (AppEvent::Eof, ClientPhase::Closing) => match c.flow.close {
                CloseOrder::ServerFirst => self.client_shutdown_then_done(flow),
                _ => self.client_closed(flow, CloseResult::Clean),
            },
            _ => {}
        }
    }

    /// The application sees its connect complete: SO_ERROR (a reset, else a soft ICMP error
    /// that arrived meanwhile) or success; then it writes header and payload.
    pub(super) fn client_wake(&mut self, flow: usize) {
        let now = self.now;
        if self.clients[flow].phase != ClientPhase::Connecting {
            return;
        }
        let pending_reset = self.clients[flow].pending_reset;
        let Some((side, conn, tcb)) = self.client_tcb(flow) else { return };
        let error = if pending_reset {
            Some(ConnectErrorKind::Reset)
        } else {
            tcb.soft_error.take().map(icmp_error_kind)
        };
        if let Some(kind) = error {
            let c = &mut self.clients[flow];
            c.pending_reset = false;
            c.local = None;
            c.connect = Some(ConnectResult::Failed(kind));
            c.phase = ClientPhase::Done;
            return self.client_drop(flow);
        }
        let (peer_fin, received) = (tcb.peer_fin, tcb.received);
        let c = &mut self.clients[flow];
        c.connect = Some(ConnectResult::Connected);
        c.phase = ClientPhase::Echoing;
        let (sent, id) = (c.sent, c.flow.id);
        let seg = self.hosts[index(side)].sockets.conns[conn].tcb.write(sent, id, now);
        if let Some(seg) = seg {
            self.emit(side, conn, seg);
        }
        self.sync_timers(side, conn);
        if peer_fin {
            let c = &mut self.clients[flow];
            let (got, sent) = (received.min(c.sent), c.sent);
            c.echo = Some(EchoResult::Short { got, sent, timed_out: false, error: None });
            c.phase = ClientPhase::Waiting;
            return;
        }
        let phase = ClientPhase::Echoing;
        self.schedule(now + ECHO_TIMEOUT, Event::ClientLimit { flow, phase });
    }

    fn client_closed(&mut self, flow: usize, result: CloseResult) {
        let c = &mut self.clients[flow];
        c.close = Some(result);
        c.phase = ClientPhase::Done;
        self.client_drop(flow);
    }

    /// `shutdown(SHUT_WR)` after the drain saw EOF (server-first order).
    fn client_shutdown_then_done(&mut self, flow: usize) {
        let now = self.now;
        let Some((side, conn, tcb)) = self.client_tcb(flow) else { return };
        let result = match shutdown_as_tokio(tcb, now) {
            Ok(fin) => {
                if let Some(fin) = fin {
                    self.emit(side, conn, fin);
                }
                self.sync_timers(side, conn);
                CloseResult::Clean
            }
            Err(errno) => CloseResult::Error(errno.into()),
        };
        self.client_closed(flow, result);
    }

    pub(super) fn client_limit(&mut self, flow: usize, phase: ClientPhase) {
        let c = &mut self.clients[flow];
        if c.phase != phase {
            return;
        }
        match phase {
            ClientPhase::Connecting => {
                c.connect = Some(ConnectResult::Failed(ConnectErrorKind::TimedOut));
                c.phase = ClientPhase::Done;
                self.client_drop(flow);
            }
            ClientPhase::Echoing => {
                let received = self.client_tcb(flow).map_or(0, |(_, _, t)| t.received);
                let c = &mut self.clients[flow];
                let (got, sent) = (received.min(c.sent), c.sent);
                c.echo = Some(EchoResult::Short { got, sent, timed_out: true, error: None });
                c.stalled = true;
                c.phase = ClientPhase::Waiting;
            }
            ClientPhase::Closing => {
                c.stalled = true;
                self.client_closed(flow, CloseResult::TimedOut);
            }
            ClientPhase::Waiting | ClientPhase::Done => {}
        }
    }

    /// The close signal reaches flow `flow`'s client.
    pub(super) fn client_close(&mut self, flow: usize) {
        if self.clients[flow].phase != ClientPhase::Waiting {
            return;
        }
        let now = self.now;
        let (order, pending) = (self.clients[flow].flow.close, self.clients[flow].pending_reset);
        let Some((side, conn, tcb)) = self.client_tcb(flow) else { return };
        match order {
            CloseOrder::ClientReset => {
                // SO_LINGER 0 always succeeds; the close then aborts.
                if let Some(rst) = tcb.abort() {
                    self.emit(side, conn, rst);
                }
                let c = &mut self.clients[flow];
                c.close = Some(CloseResult::Clean);
                c.phase = ClientPhase::Done;
                return;
            }
            CloseOrder::ClientFirst => match shutdown_as_tokio(tcb, now) {
                Err(errno) => return self.client_closed(flow, CloseResult::Error(errno.into())),
                Ok(fin) => {
                    // The drain's read: EOF at once on a connection already closed.
                    let eof = tcb.peer_fin || !tcb.is_open();
                    if let Some(fin) = fin {
                        self.emit(side, conn, fin);
                    }
                    self.sync_timers(side, conn);
                    if pending {
                        return self.client_closed(flow, CloseResult::Error("ECONNRESET".into()));
                    }
                    if eof {
                        return self.client_closed(flow, CloseResult::Clean);
                    }
                }
            },
            CloseOrder::ServerFirst => {
                let eof = tcb.peer_fin || !tcb.is_open();
                if pending {
                    return self.client_closed(flow, CloseResult::Error("ECONNRESET".into()));
                }
                if eof {
                    return self.client_shutdown_then_done(flow);
                }
            }
        }
        self.clients[flow].phase = ClientPhase::Closing;
        let phase = ClientPhase::Closing;
        self.schedule(now + CLOSE_TIMEOUT, Event::ClientLimit { flow, phase });
    }

    fn server_tcb(&mut self, server: usize) -> (Side, usize, &mut Tcb) {
        let (side, conn) = (self.servers[server].side, self.servers[server].conn);
        (side, conn, &mut self.hosts[index(side)].sockets.conns[conn].tcb)
    }

    /// The server drops its socket: `close()`.
    fn server_done(&mut self, server: usize) {
        self.servers[server].phase = ServerPhase::Done;
        let now = self.now;
        let (side, conn, tcb) = self.server_tcb(server);
        if let Some(fin) = tcb.close(now) {
            self.emit(side, conn, fin);
        }
        self.sync_timers(side, conn);
    }

    pub(super) fn server_event(
        &mut self,
        side: Side,
        conn: usize,
        listener: usize,
        event: AppEvent,
        flow: Option<u32>,
    ) {
        let now = self.now;
        if event == AppEvent::Accepted {
            let host = &mut self.hosts[index(side)];
            let (local, peer) = {
                let t = &host.sockets.conns[conn].tcb;
                (t.local, t.remote)
            };
            let orig = host.ns.original_dst(local, peer, now).ok_or_else(|| "ENOENT".to_string());
            let listener = host.sockets.listeners[listener].id.clone();
            self.accepts.push(ServerRecord { listener, local, peer, orig, flow: None });
            self.servers.push(Server {
                side,
                conn,
                record: self.accepts.len() - 1,
                order: CloseOrder::ClientFirst,
                need: 0,
                phase: ServerPhase::Header,
                peer_done: false,
            });
            let server = self.servers.len() - 1;
            host.sockets.conns[conn].server = Some(server);
            let phase = ServerPhase::Header;
            self.schedule(now + ECHO_TIMEOUT * 2, Event::ServerLimit { server, phase });
            return;
        }
        let Some(server) = self.hosts[index(side)].sockets.conns[conn].server else { return };
        let phase = self.servers[server].phase;
        match event {
            AppEvent::Data(n) if matches!(phase, ServerPhase::Header | ServerPhase::Echo) => {
                if phase == ServerPhase::Header {
                    let Some(spec) =
                        flow.and_then(|id| self.case.flows.iter().find(|f| f.id == id))
                    else {
                        return self.server_done(server);
                    };
                    self.accepts[self.servers[server].record].flow = Some(spec.id);
                    let s = &mut self.servers[server];
                    s.need = spec.bytes().len() as u32;
                    s.order = spec.close;
                    s.phase = ServerPhase::Echo;
                    let phase = ServerPhase::Echo;
                    self.schedule(now + ECHO_TIMEOUT * 2, Event::ServerLimit { server, phase });
                }
                let (need, id) = (self.servers[server].need, flow.unwrap_or_default());
                let (side, conn, tcb) = self.server_tcb(server);
                let seg = tcb.write(n, id, now);
                let done = tcb.received >= need;
                if let Some(seg) = seg {
                    self.emit(side, conn, seg);
                }
                self.sync_timers(side, conn);
                if done {
                    self.servers[server].phase = ServerPhase::Waiting;
                    if self.close_now {
                        self.server_close(server);
                    }
                }
            }
            AppEvent::Eof | AppEvent::Reset => match phase {
                ServerPhase::Header | ServerPhase::Echo => self.server_done(server),
                ServerPhase::Waiting => self.servers[server].peer_done = true,
                ServerPhase::Closing => self.server_finish_close(server),
                ServerPhase::Done => {}
            },
            _ => {}
        }
    }

    pub(super) fn server_limit(&mut self, server: usize, phase: ServerPhase) {
        if self.servers[server].phase != phase {
            return;
        }
        match phase {
            ServerPhase::Header | ServerPhase::Echo => self.server_done(server),
            ServerPhase::Closing => self.server_finish_close(server),
            ServerPhase::Waiting | ServerPhase::Done => {}
        }
    }

    /// The close signal reaches a server that finished its echo.
    pub(super) fn server_close(&mut self, server: usize) {
        let now = self.now;
        let (order, peer_done) = (self.servers[server].order, self.servers[server].peer_done);
        let (side, conn, tcb) = self.server_tcb(server);
        if order == CloseOrder::ServerFirst {
            match shutdown_as_tokio(tcb, now) {
                Err(_) => return self.server_done(server),
                Ok(fin) => {
                    if let Some(fin) = fin {
                        self.emit(side, conn, fin);
                    }
                    self.sync_timers(side, conn);
                }
            }
        }
        let (_, _, tcb) = self.server_tcb(server);
        if peer_done || tcb.peer_fin || !tcb.is_open() {
            return self.server_finish_close(server);
        }
        self.servers[server].phase = ServerPhase::Closing;
        let phase = ServerPhase::Closing;
        self.schedule(now + CLOSE_TIMEOUT, Event::ServerLimit { server, phase });
    }

    /// The client's FIN or RST came (or the time ran out): client-first order answers with a FIN.
    fn server_finish_close(&mut self, server: usize) {
        let now = self.now;
        if self.servers[server].order == CloseOrder::ClientFirst {
            let (side, conn, tcb) = self.server_tcb(server);
            if let Ok(Some(fin)) = tcb.shutdown(now) {
                self.emit(side, conn, fin);
            }
            self.sync_timers(side, conn);
        }
        self.server_done(server);
    }

    /// The observation, from the recorded results and the model's listings.
    pub(super) fn finish(self) -> Result<ModelRun, ModelError> {
        let records: Vec<ClientRecord> = self
            .clients
            .iter()
            .map(|c| ClientRecord {
                local: c.local,
                local_port: c.local_port,
                connect: c.connect.clone().unwrap_or(ConnectResult::Failed(
                    ConnectErrorKind::Other("no result in the model".into()),
                )),
                echo: c.echo.clone(),
                close: c.close.clone(),
                stalled: c.stalled,
            })
            .collect();
        let listing = self.hosts[0].ns.save(true);
        let ruleset = Ruleset::parse(&listing)
            .map_err(|e| ModelError::Output(format!("iptables-save -c: {e}\n{listing}")))?;
        let parse = |text: &str| {
            parse_list(text, None).map_err(|e| ModelError::Output(format!("conntrack -L: {e}")))
        };
        let open = self.open.clone().unwrap_or_default();
        let closed = self.snapshot();
        let observation = observe(
            self.case,
            &records,
            self.accepts,
            &ruleset,
            [(Side::Pod, parse(&open[0])?), (Side::Peer, parse(&open[1])?)],
            [(Side::Pod, parse(&closed[0])?), (Side::Peer, parse(&closed[1])?)],
        );
        Ok(ModelRun { observation, listing })
    }
}
