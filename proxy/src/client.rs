//! A standalone HBONE client: one mTLS + h2 connection to a node proxy's 15008 (or any HBONE
//! server), CONNECT streams on it. For tools and tests that speak HBONE without a client-side
//! proxy; the node proxy itself uses the pooled path in [`crate::node`].

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::identity::Identity;
use crate::inbound::forwarded_for;
use crate::tls::{ALPN_H2, TlsContext, describe_error};

/// An h2 connection carrying CONNECT streams.
#[derive(Debug, Clone)]
pub struct HboneClient {
    send: SendRequest<Bytes>,
}

impl HboneClient {
    /// Handshake over `io` as `source`, requiring the server to be `server`. The connection is
    /// driven by a spawned task until it closes.
    pub async fn connect<S>(
        io: S,
        tls: &TlsContext,
        source: &Identity,
        server: &Identity,
        server_ip: IpAddr,
    ) -> Result<Self, String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let cfg = tls.client_config(source, server).map_err(|e| e.to_string())?;
        let name = ServerName::IpAddress(server_ip.into());
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, io)
            .await
            .map_err(|e| describe_error(&e))?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
            return Err("server did not negotiate ALPN h2".into());
        }
        let (send, conn) = h2::client::handshake(tls).await.map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HboneClient { send })
    }

    /// CONNECT to `authority`; the status and, on 200, the stream.
    pub async fn open(
        &self,
        authority: SocketAddr,
        client: Option<SocketAddr>,
    ) -> Result<(u16, Option<HboneStream>), String> {
        let mut req = http::Request::new(());
        *req.method_mut() = http::Method::CONNECT;
        *req.uri_mut() = http::Uri::builder()
            .authority(authority.to_string())
            .build()
            .map_err(|e| e.to_string())?;
        if let Some(c) = client
            && let Ok(v) = http::HeaderValue::from_str(&forwarded_for(c))
        {
            req.headers_mut().insert("forwarded", v);
        }
        let mut send = self.send.clone().ready().await.map_err(|e| e.to_string())?;
        let (resp, stream) = send.send_request(req, false).map_err(|e| e.to_string())?;
        let resp = resp.await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let stream = (status == 200).then(|| HboneStream { send: stream, recv: resp.into_body() });
        Ok((status, stream))
    }
}

/// One CONNECT stream.
#[derive(Debug)]
pub struct HboneStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
}

impl HboneStream {
    /// Send `data` (respecting flow control); `end` half-closes (END_STREAM).
    pub async fn send(&mut self, data: &[u8], end: bool) -> Result<(), h2::Error> {
        let mut data = Bytes::copy_from_slice(data);
        while !data.is_empty() {
            self.send.reserve_capacity(data.len());
            let cap =
                poll_fn(|cx| self.send.poll_capacity(cx)).await.ok_or(h2::Reason::CANCEL)??;
            let n = cap.min(data.len());
            self.send.send_data(data.split_to(n), false)?;
        }
        if end {
            self.send.send_data(Bytes::new(), true)?;
        }
        Ok(())
    }

    /// Read until `n` bytes arrived or the stream ended.
    pub async fn recv(&mut self, n: usize) -> Result<Vec<u8>, h2::Error> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.recv.data().await {
                Some(chunk) => {
                    let chunk = chunk?;
                    out.extend_from_slice(&chunk);
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                }
                None => break,
            }
        }
        Ok(out)
    }

    /// Reset the stream (RST_STREAM CANCEL).
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
    }
}
