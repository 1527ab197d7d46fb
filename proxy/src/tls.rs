//! HBONE's TLS: TLS 1.3 only, ALPN `h2`, no SNI, client certificates required, and SPIFFE
//! identities verified both ways:
//!
//! - the client checks the server chains to the mesh CA and presents exactly the expected
//!   destination identity;
//! - the server checks the client chains to the mesh CA and belongs to the trust domain, and
//!   learns the client's identity from its URI SAN ([`peer_identity`]).
//!
//! Certificates are served from the [`CertStore`] on every handshake, so rotation takes effect
//! without rebuilding configs. Time comes from the injected [`crate::clock::WallClock`].

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::ca::CertStore;
use crate::identity::Identity;
use crate::x509::uri_sans;

/// ALPN protocol of HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a peer certificate's identity is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("peer certificate carries no SPIFFE identity")]
    Missing,
    #[error("peer certificate carries several URI SANs")]
    Ambiguous,
    #[error("peer identity {0} is not in trust domain {1}")]
    WrongTrustDomain(String, String),
    #[error("peer identity {got} is not the expected {expected}")]
    Unexpected { got: String, expected: String },
}

fn other(e: IdentityError) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The SPIFFE identity of a DER certificate (exactly one URI SAN, a valid identity).
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, IdentityError> {
    let sans = uri_sans(cert).ok_or(IdentityError::Missing)?;
    match sans.as_slice() {
        [one] => one.parse().map_err(|_| IdentityError::Missing),
        [] => Err(IdentityError::Missing),
        _ => Err(IdentityError::Ambiguous),
    }
}

/// The identity a finished handshake authenticated.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<Identity> {
    conn.peer_certificates()?.first().and_then(|c| identity_of(c).ok())
}

/// Chain validation against the mesh roots, then the trust-domain check.
struct SpiffeVerifier {
    roots: Vec<CertificateDer<'static>>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SpiffeVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeVerifier").field("trust_domain", &self.trust_domain).finish()
    }
}

impl SpiffeVerifier {
    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<Identity, Error> {
        let anchors = self
            .roots
            .iter()
            .map(|r| webpki::anchor_from_trusted_cert(r).map_err(pki_error))
            .collect::<Result<Vec<_>, _>>()?;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        ee.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(pki_error)?;
        let id = identity_of(end_entity).map_err(other)?;
        if id.trust_domain != self.trust_domain {
            return Err(other(IdentityError::WrongTrustDomain(
                id.to_string(),
                self.trust_domain.clone(),
            )));
        }
        Ok(id)
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn pki_error(e: webpki::Error) -> Error {
    use webpki::Error as E;
    Error::InvalidCertificate(match e {
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

/// Client side: the server must be `expected`.
#[derive(Debug)]
struct ServerIdentityVerifier {
    inner: SpiffeVerifier,
    expected: Identity,
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let id =
            self.inner.verify(end_entity, intermediates, now, webpki::KeyUsage::server_auth())?;
        if id != self.expected {
            return Err(other(IdentityError::Unexpected {
                got: id.to_string(),
                expected: self.expected.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.schemes()
    }
}

/// Server side: any identity of the trust domain, chained to the mesh CA; mandatory.
#[derive(Debug)]
struct ClientIdentityVerifier {
    inner: SpiffeVerifier,
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner.verify(end_entity, intermediates, now, webpki::KeyUsage::client_auth())?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.tls13(m, c, d)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.schemes()
    }
}

/// Serves the current certificate of one identity from the store (both TLS roles).
#[derive(Debug)]
struct IdentityCert {
    store: Arc<CertStore>,
    id: Identity,
}

impl IdentityCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self.store.get(&self.id) {
            Ok(issued) => Some(issued.certified.clone()),
            Err(e) => {
                tracing::error!(identity = %self.id, error = %e, "no certificate to present");
                None
            }
        }
    }
}

impl ResolvesClientCert for IdentityCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for IdentityCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

/// Builds the TLS configs of one node proxy.
#[derive(Debug, Clone)]
pub struct TlsContext {
    store: Arc<CertStore>,
    trust_domain: String,
}

impl TlsContext {
    pub fn new(store: Arc<CertStore>, trust_domain: impl Into<String>) -> Self {
        TlsContext { store, trust_domain: trust_domain.into() }
    }

    pub fn store(&self) -> &Arc<CertStore> {
        &self.store
    }

    fn verifier(&self) -> SpiffeVerifier {
        SpiffeVerifier {
            roots: vec![self.store.ca().root().clone()],
            trust_domain: self.trust_domain.clone(),
            provider: self.store.provider().clone(),
        }
    }

    /// Client config: present `source`, accept only `expected_server`.
    pub fn client_config(
        &self,
        source: &Identity,
        expected_server: &Identity,
    ) -> Result<Arc<ClientConfig>, Error> {
        let provider = self.store.provider().clone();
        let mut cfg =
            ClientConfig::builder_with_details(provider, Arc::new(self.store.clock().clone()))
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier {
                    inner: self.verifier(),
                    expected: expected_server.clone(),
                }))
                .with_client_cert_resolver(Arc::new(IdentityCert {
                    store: self.store.clone(),
                    id: source.clone(),
                }));
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        cfg.enable_sni = false;
        // Every tunnel is a full handshake: no hidden state carried between connections.
        cfg.resumption = Resumption::disabled();
        Ok(Arc::new(cfg))
    }

    /// Server config for a pod's 15008 listener: present `identity`, require a mesh client.
    pub fn server_config(&self, identity: &Identity) -> Result<Arc<ServerConfig>, Error> {
        let provider = self.store.provider().clone();
        let mut cfg =
            ServerConfig::builder_with_details(provider, Arc::new(self.store.clock().clone()))
                .with_protocol_versions(&[&rustls::version::TLS13])?
                .with_client_cert_verifier(Arc::new(ClientIdentityVerifier {
                    inner: self.verifier(),
                }))
                .with_cert_resolver(Arc::new(IdentityCert {
                    store: self.store.clone(),
                    id: identity.clone(),
                }));
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        cfg.send_tls13_tickets = 0;
        cfg.session_storage = Arc::new(NoServerSessionStorage {});
        Ok(Arc::new(cfg))
    }
}

/// A TLS failure as one readable sentence (for events and logs): the peer-certificate reason
/// when there is one, the alert the peer sent, or the I/O error.
pub fn describe_error(e: &std::io::Error) -> String {
    let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<Error>()) else {
        return e.to_string();
    };
    match inner {
        Error::InvalidCertificate(CertificateError::Other(OtherError(o))) => {
            format!("invalid peer certificate: {o}")
        }
        Error::InvalidCertificate(c) => format!("invalid peer certificate: {c:?}"),
        Error::AlertReceived(a) => format!("peer refused the handshake: {a:?} alert"),
        other => other.to_string(),
    }
}
