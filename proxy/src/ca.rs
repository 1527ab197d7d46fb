//! The mesh CA: an Ed25519 root (rcgen) that issues workload certificates per SPIFFE identity,
//! and the [`CertStore`] that caches them per identity and rotates them before they expire.
//!
//! Keys come from a [`KeySource`]: derived from a seed (reproducible — the simulator, and
//! `testbed certs --seed`) or drawn from the injected crypto provider's rng. An Ed25519 key is its
//! 32-byte seed wrapped as PKCS#8, so a seed fully determines a key, and Ed25519 signatures are
//! deterministic: the same seed and clock give byte-identical certificates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ED25519, SanType,
    SerialNumber,
};
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::clock::WallClock;
use crate::identity::Identity;

/// Workload certificates live this long (Istio's default is 24 h) …
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// … and are replaced once this fraction of their life has passed.
pub const ROTATE_AT_FRACTION: f64 = 0.5;
/// Validity starts this much before issuance, for peers whose clocks lag.
const BACKDATE: Duration = Duration::from_secs(300);
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Errors of the CA and certificate store.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("random source failed")]
    Random,
    #[error("loading the key into rustls failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Pem(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Where private keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Derived from `(seed, label)`: reproducible.
    Seeded(u64),
    /// Drawn from the provider's `SecureRandom` (real runs: the OS; deterministic provider: its seed).
    Random(Arc<CryptoProvider>),
}

impl KeySource {
    /// 32 bytes of key seed for `label` (e.g. an identity and its rotation generation).
    pub fn key_seed(&self, label: &str) -> Result<[u8; 32], CaError> {
        let mut out = [0u8; 32];
        match self {
            KeySource::Seeded(seed) => {
                let mut rng = ChaCha20Rng::seed_from_u64(*seed);
                rng.set_stream(fnv1a(label.as_bytes()));
                rng.fill_bytes(&mut out);
            }
            KeySource::Random(p) => p.secure_random.fill(&mut out).map_err(|_| CaError::Random)?,
        }
        Ok(out)
    }
}

/// A stable 64-bit hash (not `DefaultHasher`, whose output may change between Rust releases).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// An Ed25519 private key as PKCS#8 v1 DER, from its 32-byte seed (RFC 8410 encoding).
pub fn ed25519_pkcs8(seed: &[u8; 32]) -> PrivatePkcs8KeyDer<'static> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    PrivatePkcs8KeyDer::from(der)
}

fn key_pair(seed: &[u8; 32]) -> Result<KeyPair, CaError> {
    Ok(KeyPair::from_pkcs8_der_and_sign_algo(&ed25519_pkcs8(seed), &PKCS_ED25519)?)
}

fn time_at(t: Duration) -> time::OffsetDateTime {
    let secs = i64::try_from(t.as_secs()).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn serial(label: &str) -> SerialNumber {
    // Positive, non-zero, 8 bytes.
    let mut s = fnv1a(label.as_bytes()).to_be_bytes();
    s[0] = (s[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&s)
}

/// The mesh's root of trust.
#[derive(Debug)]
pub struct MeshCa {
    trust_domain: String,
    params: CertificateParams,
    key: KeyPair,
    cert: CertificateDer<'static>,
    /// Made elsewhere ([`MeshCa::from_foreign_pem`]): its subject is copied, its key
    /// identifier unknown (leaves carry no authority key identifier).
    foreign: bool,
}

impl MeshCa {
    fn params(trust_domain: &str, now: Duration) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "ambient-testbed");
        dn.push(DnType::CommonName, format!("{trust_domain} mesh CA"));
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = time_at(now.saturating_sub(BACKDATE));
        p.not_after = time_at(now + CA_LIFETIME);
        p.serial_number = Some(serial(&format!("ca:{trust_domain}")));
        p
    }

    /// A new CA for `trust_domain`, valid from `now` (Unix time) for ten years.
    pub fn generate(
        trust_domain: &str,
        keys: &KeySource,
        now: Duration,
    ) -> Result<MeshCa, CaError> {
        let key = key_pair(&keys.key_seed(&format!("ca:{trust_domain}"))?)?;
        let params = MeshCa::params(trust_domain, now);
        let cert = params.self_signed(&key)?.der().clone();
        Ok(MeshCa { trust_domain: trust_domain.to_string(), params, key, cert, foreign: false })
    }

    /// A CA written by `testbed certs` (its subject is the one [`MeshCa::generate`] makes).
    /// Checked by issuing a probe certificate and verifying it against `cert_pem`.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<MeshCa, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Pem(format!("CA key: {e}")))?;
        if key.algorithm() != &PKCS_ED25519 {
            return Err(CaError::Pem("CA key: expected an Ed25519 key".into()));
        }
        let cert = pem_certs(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Pem("CA certificate: no CERTIFICATE block".into()))?;
        let ca = MeshCa {
            trust_domain: trust_domain.to_string(),
            params: MeshCa::params(trust_domain, Duration::ZERO),
            key,
            cert,
            foreign: false,
        };
        ca.verify_probe(
            (Duration::ZERO, CA_LIFETIME * 10),
            Duration::from_secs(1_000_000_000),
            &[webpki::ring::ED25519],
            || format!("the CA certificate and key do not belong together or were not written by `testbed certs` for trust domain {trust_domain}"),
        )?;
        Ok(ca)
    }

    /// A CA made by someone else — ztunnel's `FAKE_CA` test root (RSA-2048, subject
    /// `O=cluster.local`) for a cluster where our proxies and ztunnel trust one root. Any key
    /// rcgen can sign with (RSA, ECDSA P-256/P-384, Ed25519; PKCS#8 PEM); the certificate's
    /// subject becomes the leaves' issuer, string types and all, so the chain verifies. Checked by
    /// issuing a probe certificate and verifying it against the certificate.
    pub fn from_foreign_pem(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<MeshCa, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Pem(format!("CA key: {e}")))?;
        let cert = pem_certs(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| CaError::Pem("CA certificate: no CERTIFICATE block".into()))?;
        let subject = crate::x509::subject_attributes(&cert)
            .ok_or_else(|| CaError::Pem("CA certificate: its subject does not parse".into()))?;
        let mut dn = DistinguishedName::new();
        for (oid, tag, value) in subject {
            let text = String::from_utf8(value)
                .map_err(|_| CaError::Pem("CA certificate: a subject value is not text".into()))?;
            let value = match tag {
                0x0c => DnValue::Utf8String(text),
                0x13 => DnValue::PrintableString(text.try_into()?),
                0x16 => DnValue::Ia5String(text.try_into()?),
                other => {
                    return Err(CaError::Pem(format!(
                        "CA certificate: subject string type {other:#04x} is not supported"
                    )));
                }
            };
            dn.push(DnType::from_oid(&oid), value);
        }
        let mut params = MeshCa::params(trust_domain, Duration::ZERO);
        params.distinguished_name = dn;
        let ca =
            MeshCa { trust_domain: trust_domain.to_string(), params, key, cert, foreign: true };
        ca.verify_probe(
            (Duration::from_secs(2_000_000_000), CA_LIFETIME),
            Duration::from_secs(2_000_000_100),
            webpki::ALL_VERIFICATION_ALGS,
            || "the CA certificate and key do not belong together".to_string(),
        )?;
        Ok(ca)
    }

    /// Issues a probe leaf valid for `(from, lifetime)` and verifies it against this CA at
    /// `at` with `algs`: a certificate and key that do not belong together fail here, with
    /// `mismatch` as the message, instead of at the first handshake.
    fn verify_probe(
        &self,
        (from, lifetime): (Duration, Duration),
        at: Duration,
        algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm],
        mismatch: impl FnOnce() -> String,
    ) -> Result<(), CaError> {
        let probe = self.issue(
            &Identity::new(&self.trust_domain, "probe", "probe"),
            &[7; 32],
            from,
            lifetime,
        )?;
        let anchor = webpki::anchor_from_trusted_cert(&self.cert)
            .map_err(|e| CaError::Pem(format!("CA certificate: {e:?}")))?;
        let ee = webpki::EndEntityCert::try_from(&probe.cert)
            .map_err(|e| CaError::Pem(format!("{e:?}")))?;
        ee.verify_for_usage(
            algs,
            &[anchor],
            &[],
            rustls_pki_types::UnixTime::since_unix_epoch(at),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| CaError::Pem(format!("{} ({e:?})", mismatch())))?;
        Ok(())
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn root_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.cert)
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Issue a certificate for `id` with the Ed25519 key of `key_seed`, valid from `now` (minus a
    /// few minutes of backdating) for `lifetime`.
    pub fn issue(
        &self,
        id: &Identity,
        key_seed: &[u8; 32],
        now: Duration,
        lifetime: Duration,
    ) -> Result<WorkloadCert, CaError> {
        let key = key_pair(key_seed)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = !self.foreign;
        let not_before = now.saturating_sub(BACKDATE);
        let not_after = now + lifetime;
        p.not_before = time_at(not_before);
        p.not_after = time_at(not_after);
        p.serial_number = Some(serial(&format!("{id}@{}:{}", now.as_secs(), fnv1a(key_seed))));
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer)?.der().clone();
        Ok(WorkloadCert {
            identity: id.clone(),
            cert,
            key: ed25519_pkcs8(key_seed),
            not_before,
            not_after,
            issued_at: now,
        })
    }
}

/// A workload's certificate and private key.
#[derive(Debug)]
pub struct WorkloadCert {
    pub identity: Identity,
    pub cert: CertificateDer<'static>,
    pub key: PrivatePkcs8KeyDer<'static>,
    /// Validity, as Unix time.
    pub not_before: Duration,
    pub not_after: Duration,
    pub issued_at: Duration,
}

impl WorkloadCert {
    pub fn cert_pem(&self) -> String {
        to_pem("CERTIFICATE", &self.cert)
    }

    pub fn key_pem(&self) -> String {
        to_pem("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// As rustls wants it, with the provider's key loader.
    pub fn certified_key(&self, provider: &CryptoProvider) -> Result<CertifiedKey, CaError> {
        let key =
            provider.key_provider.load_private_key(PrivateKeyDer::Pkcs8(self.key.clone_key()))?;
        Ok(CertifiedKey::new(vec![self.cert.clone()], key))
    }
}

/// PEM armour (64-column base64).
pub fn to_pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every CERTIFICATE block of a PEM text.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem(format!("bad PEM: {e}")))
}

/// One issued certificate in the store, ready for rustls.
#[derive(Debug)]
pub struct Issued {
    pub cert: WorkloadCert,
    pub certified: Arc<CertifiedKey>,
    /// 0 for the first certificate of an identity, +1 per rotation.
    pub generation: u64,
}

/// Workload certificates per identity, issued on first use and re-issued (rotated) once
/// [`ROTATE_AT_FRACTION`] of their lifetime has passed — so a live proxy never presents an
/// expired certificate.
#[derive(Debug)]
pub struct CertStore {
    ca: Arc<MeshCa>,
    keys: KeySource,
    clock: WallClock,
    provider: Arc<CryptoProvider>,
    lifetime: Duration,
    issued: Mutex<BTreeMap<Identity, Arc<Issued>>>,
}

impl CertStore {
    pub fn new(
        ca: Arc<MeshCa>,
        keys: KeySource,
        clock: WallClock,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        CertStore {
            ca,
            keys,
            clock,
            provider,
            lifetime: DEFAULT_CERT_LIFETIME,
            issued: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    pub fn ca(&self) -> &Arc<MeshCa> {
        &self.ca
    }

    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The current certificate for `id`, rotating it if it is due.
    pub fn get(&self, id: &Identity) -> Result<Arc<Issued>, CaError> {
        let now = self.clock.now();
        let mut issued = self.issued.lock().unwrap_or_else(|e| e.into_inner());
        let generation = match issued.get(id) {
            Some(cur) if !self.due(cur, now) => return Ok(cur.clone()),
            Some(cur) => cur.generation + 1,
            None => 0,
        };
        let seed = self.keys.key_seed(&format!("{id}#{generation}"))?;
        let cert = self.ca.issue(id, &seed, now, self.lifetime)?;
        let certified = Arc::new(cert.certified_key(&self.provider)?);
        let fresh = Arc::new(Issued { cert, certified, generation });
        if generation > 0 {
            tracing::info!(identity = %id, generation, "rotated workload certificate");
        }
        issued.insert(id.clone(), fresh.clone());
        Ok(fresh)
    }

    fn due(&self, cur: &Issued, now: Duration) -> bool {
        let life = cur.cert.not_after.saturating_sub(cur.cert.issued_at);
        now >= cur.cert.issued_at + life.mul_f64(ROTATE_AT_FRACTION)
    }
}

/// What `testbed certs` writes: the CA (`ca.pem`, `ca-key.pem`) and, per identity,
/// `<namespace>.<service account>.pem` and `….key.pem`. Returns the files written, in order.
pub fn write_bundle(
    dir: &Path,
    ca: &MeshCa,
    certs: &[WorkloadCert],
) -> Result<Vec<PathBuf>, CaError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CaError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut files: Vec<(PathBuf, String)> =
        vec![(dir.join("ca.pem"), ca.root_pem()), (dir.join("ca-key.pem"), ca.key_pem())];
    for c in certs {
        let stem = format!("{}.{}", c.identity.namespace, c.identity.service_account);
        files.push((dir.join(format!("{stem}.pem")), c.cert_pem()));
        files.push((dir.join(format!("{stem}.key.pem")), c.key_pem()));
    }
    for (path, text) in &files {
        std::fs::write(path, text).map_err(io(path))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::FIXED_ORIGIN;

    fn id() -> Identity {
        "spiffe://cluster.local/ns/default/sa/sleep".parse().unwrap()
    }

    #[test]
    fn a_foreign_rsa_root_issues_leaves_that_chain_to_it() {
        // An RSA-2048 root made with openssl (as ztunnel's FAKE_CA root is), for this test only.
        let cert = include_str!("testdata/foreign-ca.pem");
        let key = include_str!("testdata/foreign-ca-key.pem");
        let ca = MeshCa::from_foreign_pem("cluster.local", cert, key).unwrap();
        let now = Duration::from_secs(1_900_000_000);
        let leaf = ca.issue(&id(), &[3; 32], now, DEFAULT_CERT_LIFETIME).unwrap();
        assert_eq!(crate::x509::uri_sans(&leaf.cert).unwrap(), [id().to_string()]);
        // The leaf's issuer is the root's subject byte for byte: webpki chains it.
        let anchor = webpki::anchor_from_trusted_cert(ca.root()).unwrap();
        let ee = webpki::EndEntityCert::try_from(&leaf.cert).unwrap();
        ee.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &[anchor],
            &[],
            rustls_pki_types::UnixTime::since_unix_epoch(now),
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .unwrap();
        // A key that is not the certificate's is refused.
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap().serialize_pem();
        let err = MeshCa::from_foreign_pem("cluster.local", cert, &other).unwrap_err();
        assert!(err.to_string().contains("do not belong together"), "{err}");
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let make = |seed| {
            let keys = KeySource::Seeded(seed);
            let ca = MeshCa::generate("cluster.local", &keys, FIXED_ORIGIN).unwrap();
            let leaf = ca
                .issue(&id(), &keys.key_seed("leaf").unwrap(), FIXED_ORIGIN, DEFAULT_CERT_LIFETIME)
                .unwrap();
            (ca.root().to_vec(), ca.key_pem(), leaf.cert.to_vec(), leaf.key_pem())
        };
        assert_eq!(make(1), make(1));
        let (a, b) = (make(1), make(2));
        assert_ne!(a.0, b.0);
        assert_ne!(a.2, b.2);
    }

    #[test]
    fn leaf_carries_the_identity_and_chains_to_the_root() {
        let keys = KeySource::Seeded(3);
        let ca = MeshCa::generate("cluster.local", &keys, FIXED_ORIGIN).unwrap();
        let leaf = ca.issue(&id(), &[1; 32], FIXED_ORIGIN, DEFAULT_CERT_LIFETIME).unwrap();
        assert_eq!(crate::x509::uri_sans(&leaf.cert).unwrap(), [id().to_string()]);
        let anchor = webpki::anchor_from_trusted_cert(ca.root()).unwrap();
        let ee = webpki::EndEntityCert::try_from(&leaf.cert).unwrap();
        let at = |d: Duration| rustls_pki_types::UnixTime::since_unix_epoch(d);
        let verify = |t| {
            ee.verify_for_usage(
                &[webpki::ring::ED25519],
                std::slice::from_ref(&anchor),
                &[],
                t,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map(|_| ())
        };
        verify(at(FIXED_ORIGIN + Duration::from_secs(60))).unwrap();
        assert!(verify(at(FIXED_ORIGIN + DEFAULT_CERT_LIFETIME + Duration::from_secs(1))).is_err());
    }

    #[test]
    fn pem_round_trip_reloads_the_same_ca() {
        let ca = MeshCa::generate("cluster.local", &KeySource::Seeded(5), FIXED_ORIGIN).unwrap();
        let again = MeshCa::from_pem("cluster.local", &ca.root_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.root(), ca.root());
        let other = MeshCa::generate("cluster.local", &KeySource::Seeded(6), FIXED_ORIGIN).unwrap();
        let err = MeshCa::from_pem("cluster.local", &ca.root_pem(), &other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("do not belong together"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn store_rotates_at_half_life() {
        let keys = KeySource::Seeded(9);
        let ca = Arc::new(MeshCa::generate("cluster.local", &keys, FIXED_ORIGIN).unwrap());
        let store = CertStore::new(
            ca,
            keys,
            WallClock::starting_at(FIXED_ORIGIN),
            crate::crypto::deterministic_provider(1),
        )
        .with_lifetime(Duration::from_secs(3600));
        let first = store.get(&id()).unwrap();
        tokio::time::advance(Duration::from_secs(1799)).await;
        assert_eq!(store.get(&id()).unwrap().generation, 0);
        tokio::time::advance(Duration::from_secs(1)).await;
        let second = store.get(&id()).unwrap();
        assert_eq!(second.generation, 1);
        assert_ne!(first.cert.cert, second.cert.cert);
        assert!(second.cert.not_after > first.cert.not_after);
    }
}
