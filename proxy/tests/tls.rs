//! HBONE TLS in memory: identities verified both ways, foreign CA / wrong trust domain /
//! unexpected server identity refused, and byte-identical handshakes from the same seed.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ambient_proxy::ca::{CertStore, KeySource, MeshCa};
use ambient_proxy::clock::{FIXED_ORIGIN, WallClock};
use ambient_proxy::crypto::deterministic_provider;
use ambient_proxy::identity::Identity;
use ambient_proxy::tls::{TlsContext, describe_error, peer_identity};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

fn id(s: &str) -> Identity {
    s.parse().unwrap()
}

fn context(td: &str, ca_seed: u64, rng_seed: u64) -> TlsContext {
    let keys = KeySource::Seeded(ca_seed);
    let ca = Arc::new(MeshCa::generate(td, &keys, FIXED_ORIGIN).unwrap());
    let store = CertStore::new(
        ca,
        keys,
        WallClock::starting_at(FIXED_ORIGIN),
        deterministic_provider(rng_seed),
    );
    TlsContext::new(Arc::new(store), td)
}

/// Records every byte written through it.
struct Recorder<S> {
    inner: S,
    log: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorder<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorder<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = p {
            self.log.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        p
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

struct Run {
    client_result: Result<(), String>,
    server_result: Result<Identity, String>,
    transcript: Vec<u8>,
}

async fn handshake(
    client: &TlsContext,
    client_id: &str,
    expect_server: &str,
    server: &TlsContext,
    server_id: &str,
) -> Run {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let log = Arc::new(Mutex::new(Vec::new()));
    let a = Recorder { inner: a, log: log.clone() };
    let b = Recorder { inner: b, log: log.clone() };
    let connector = tokio_rustls::TlsConnector::from(
        client.client_config(&id(client_id), &id(expect_server)).unwrap(),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(server.server_config(&id(server_id)).unwrap());
    let name = ServerName::IpAddress("10.0.2.5".parse::<std::net::IpAddr>().unwrap().into());
    let c = async move {
        let mut s = connector.connect(name, a).await.map_err(|e| describe_error(&e))?;
        s.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        Ok::<(), String>(())
    };
    let s = async move {
        let mut s = acceptor.accept(b).await.map_err(|e| describe_error(&e))?;
        let peer = peer_identity(s.get_ref().1).ok_or("no peer identity")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        s.write_all(b"pong").await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        Ok::<Identity, String>(peer)
    };
    let (client_result, server_result) = tokio::join!(c, s);
    let transcript = log.lock().unwrap().clone();
    Run { client_result, server_result, transcript }
}

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const ECHO: &str = "spiffe://cluster.local/ns/default/sa/echo";

#[tokio::test(start_paused = true)]
async fn identities_are_verified_both_ways() {
    let ctx = context("cluster.local", 1, 1);
    let r = handshake(&ctx, SLEEP, ECHO, &ctx, ECHO).await;
    assert_eq!(r.client_result, Ok(()));
    assert_eq!(r.server_result, Ok(id(SLEEP)));
}

#[tokio::test(start_paused = true)]
async fn the_client_refuses_an_unexpected_server_identity() {
    let ctx = context("cluster.local", 1, 1);
    let r =
        handshake(&ctx, SLEEP, ECHO, &ctx, "spiffe://cluster.local/ns/default/sa/impostor").await;
    let err = r.client_result.unwrap_err();
    assert!(err.contains("is not the expected spiffe://cluster.local/ns/default/sa/echo"), "{err}");
    assert!(r.server_result.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_foreign_ca_is_refused() {
    let (ours, foreign) = (context("cluster.local", 1, 1), context("cluster.local", 2, 2));
    let r = handshake(&foreign, SLEEP, ECHO, &ours, ECHO).await;
    // The client (foreign CA) already refuses our server; our server refuses its certificate too.
    // Both CAs have the same subject, so the chain is built and its signature fails.
    assert_eq!(r.client_result.unwrap_err(), "invalid peer certificate: BadSignature");
    assert!(r.server_result.is_err());
    let r = handshake(&ours, SLEEP, ECHO, &foreign, ECHO).await;
    assert_eq!(r.client_result.unwrap_err(), "invalid peer certificate: BadSignature");
    // A CA of another trust domain (another subject) is an unknown issuer.
    let other = context("example.org", 3, 3);
    let r = handshake(&ours, SLEEP, ECHO, &other, "spiffe://example.org/ns/default/sa/echo").await;
    assert_eq!(r.client_result.unwrap_err(), "invalid peer certificate: UnknownIssuer");
}

#[tokio::test(start_paused = true)]
async fn a_client_from_another_trust_domain_is_refused() {
    // One CA, but the server only accepts cluster.local.
    let keys = KeySource::Seeded(1);
    let ca = Arc::new(MeshCa::generate("cluster.local", &keys, FIXED_ORIGIN).unwrap());
    let store = Arc::new(CertStore::new(
        ca,
        keys,
        WallClock::starting_at(FIXED_ORIGIN),
        deterministic_provider(1),
    ));
    let server = TlsContext::new(store.clone(), "cluster.local");
    let client = TlsContext::new(store, "cluster.local");
    let r =
        handshake(&client, "spiffe://other.domain/ns/default/sa/sleep", ECHO, &server, ECHO).await;
    let err = r.server_result.unwrap_err();
    assert!(err.contains("is not in trust domain cluster.local"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn same_seed_gives_identical_handshake_bytes() {
    let run = |seed| async move {
        let ctx = context("cluster.local", 5, seed);
        handshake(&ctx, SLEEP, ECHO, &ctx, ECHO).await.transcript
    };
    let (a, b, c) = (run(11).await, run(11).await, run(12).await);
    assert!(a.len() > 1000);
    assert_eq!(a, b);
    assert_ne!(a, c);
}
