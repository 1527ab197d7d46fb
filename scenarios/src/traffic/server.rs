//! The apps a scenario can run behind a listening port (`serve: [{port, app}]`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::AppStream;
use crate::world::App;

/// What an app did with one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeReport {
    /// Bytes it read before the client half-closed (or the connection failed).
    pub received: u64,
    /// Bytes it wrote back.
    pub returned: u64,
    /// The connection ended with an error (a reset, mostly) instead of the app's own close.
    pub failed: bool,
}

/// Serve one accepted connection the way `app` does:
/// - `echo` returns every byte it reads and closes when the client half-closes;
/// - `sink` reads everything, returns nothing, closes at EOF;
/// - `close` closes its side at once (a FIN, nothing returned), then reads and discards until the
///   client half-closes — so a close never turns into a reset because of unread bytes, which on a
///   real kernel would depend on timing;
/// - `reset` waits for the client's first bytes (or its half-close), then resets (a RST). Not at
///   once: a proxy between client and app connects to the app before it forwards anything, and
///   an app that reset straight after accepting would race that connect — on a real kernel the
///   proxy would then see the reset as a failed connect (ECONNRESET from `connect`) about as
///   often as a reset of an established connection, and the client's write would race the RST.
pub async fn serve<S: AppStream>(app: App, mut stream: S) -> ServeReport {
    let mut report = ServeReport { received: 0, returned: 0, failed: false };
    match app {
        App::Echo | App::Sink => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(_) => {
                        report.failed = true;
                        return report;
                    }
                };
                report.received += n as u64;
                if app == App::Echo {
                    if stream.write_all(&buf[..n]).await.is_err() {
                        report.failed = true;
                        return report;
                    }
                    report.returned += n as u64;
                }
            }
            report.failed = stream.shutdown().await.is_err();
        }
        App::Close => {
            report.failed = stream.shutdown().await.is_err();
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => report.received += n as u64,
                    Err(_) => {
                        report.failed = true;
                        break;
                    }
                }
            }
        }
        App::Reset => {
            let mut buf = [0u8; 1];
            match stream.read(&mut buf).await {
                Ok(n) => report.received += n as u64,
                Err(_) => report.failed = true,
            }
            stream.reset();
        }
    }
    report
}
