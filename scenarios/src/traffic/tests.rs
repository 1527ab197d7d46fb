use std::io;
use std::time::Duration;

use tokio::io::DuplexStream;

use super::*;
use crate::world::App;

/// A pipe stands in for a socket here; dropping it is as close to a reset as a pipe gets.
impl AppStream for DuplexStream {
    fn reset(self) {}
}

fn spec(send: u64) -> ClientSpec {
    ClientSpec { send, hold: Duration::ZERO, deadline: Duration::from_secs(10), payload: 42 }
}

async fn exchange(app: App, send: u64) -> (ClientReport, ServeReport) {
    let (client, server) = tokio::io::duplex(4096);
    let server = tokio::spawn(serve(app, server));
    let report = run_client(async { Ok::<_, io::Error>(client) }, &spec(send)).await;
    (report, server.await.unwrap())
}

#[tokio::test(start_paused = true)]
async fn an_echo_returns_every_byte_even_when_far_larger_than_any_buffer() {
    let (report, served) = exchange(App::Echo, 1 << 20).await;
    assert_eq!(report.end, ClientEnd::Closed);
    assert_eq!((report.sent, report.received), (1 << 20, 1 << 20));
    assert!(report.intact(1 << 20));
    assert_eq!((served.received, served.returned, served.failed), (1 << 20, 1 << 20, false));
}

#[tokio::test(start_paused = true)]
async fn sink_and_close_return_nothing_and_close_cleanly() {
    for app in [App::Sink, App::Close] {
        let (report, served) = exchange(app, 5000).await;
        assert_eq!(report.end, ClientEnd::Closed, "{app:?}");
        assert_eq!((report.sent, report.received), (5000, 0), "{app:?}");
        assert!(report.intact(0), "{app:?}");
        assert!(!served.failed, "{app:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_connect_that_never_completes_times_out_at_the_deadline() {
    let start = tokio::time::Instant::now();
    let never = std::future::pending::<io::Result<DuplexStream>>();
    let report = run_client(never, &spec(10)).await;
    assert_eq!(report.end, ClientEnd::Timeout);
    assert!(!report.connected);
    assert_eq!(start.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn a_refused_connect_is_reported_as_refused() {
    let refused =
        async { Err::<DuplexStream, _>(io::Error::from(io::ErrorKind::ConnectionRefused)) };
    let report = run_client(refused, &spec(10)).await;
    assert_eq!(report.end, ClientEnd::Refused);
}

#[tokio::test(start_paused = true)]
async fn the_hold_is_not_counted_in_the_deadline() {
    let (client, server) = tokio::io::duplex(4096);
    tokio::spawn(serve(App::Echo, server));
    let spec = ClientSpec { hold: Duration::from_secs(30), ..spec(100) };
    let report = run_client(async { Ok::<_, io::Error>(client) }, &spec).await;
    assert_eq!(report.end, ClientEnd::Closed);
    assert!(report.intact(100));
}

#[tokio::test(start_paused = true)]
async fn a_reply_that_differs_from_what_was_sent_is_not_intact() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (client, mut server) = tokio::io::duplex(4096);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 100];
        server.read_exact(&mut buf).await.unwrap();
        buf[50] ^= 1;
        server.write_all(&buf).await.unwrap();
        server.shutdown().await.unwrap();
    });
    let report = run_client(async { Ok::<_, io::Error>(client) }, &spec(100)).await;
    assert_eq!(report.received, 100);
    assert!(!report.echoed);
    assert!(!report.intact(100));
}

#[tokio::test(start_paused = true)]
async fn reset_waits_for_the_first_bytes_or_the_half_close_before_resetting() {
    use tokio::io::AsyncWriteExt;
    let (mut client, server) = tokio::io::duplex(4096);
    let app = tokio::spawn(serve(App::Reset, server));
    // Nothing sent yet: the app has not reset (a proxy's connect to it cannot race a reset).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!app.is_finished());
    client.write_all(b"x").await.unwrap();
    let served = app.await.unwrap();
    assert_eq!((served.received, served.returned, served.failed), (1, 0, false));
    // A client that sends nothing and half-closes is reset at its EOF.
    let (mut client, server) = tokio::io::duplex(4096);
    let app = tokio::spawn(serve(App::Reset, server));
    client.shutdown().await.unwrap();
    assert_eq!(app.await.unwrap().received, 0);
}
