//! The rustls [`CryptoProvider`] is injected: real runs use ring's default; the simulator needs
//! byte-identical TLS runs and uses [`deterministic_provider`]:
//!
//! - a seeded `SecureRandom` (ChaCha20) for every random the handshake draws;
//! - an X25519 key exchange whose private keys come from that seeded rng (ring's agreement API
//!   takes no custom rng, so this uses x25519-dalek);
//! - ring's signing and verification otherwise — certificates are Ed25519, whose signatures are
//!   deterministic (ring's ECDSA draws an unseeded nonce).
//!
//! A rustls provider holds its rng and key-exchange groups as `&'static`; the deterministic
//! provider therefore leaks two small objects per call. Make one per run, not per connection.

use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, SecureRandom, SharedSecret,
    SupportedKxGroup,
};
use rustls::{Error, NamedGroup, PeerMisbehaved};

/// ring's provider, with the operating system's randomness: what real runs use.
pub fn default_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A provider whose every random byte and key-exchange key derives from `seed`.
pub fn deterministic_provider(seed: u64) -> Arc<CryptoProvider> {
    let rng: &'static SeededRandom = Box::leak(Box::new(SeededRandom::new(seed)));
    let kx: &'static SeededX25519 = Box::leak(Box::new(SeededX25519 { rng }));
    Arc::new(CryptoProvider {
        kx_groups: vec![kx],
        secure_random: rng,
        ..rustls::crypto::ring::default_provider()
    })
}

/// ChaCha20 seeded from a `u64`: rustls's randomness in deterministic runs.
#[derive(Debug)]
pub struct SeededRandom {
    rng: Mutex<ChaCha20Rng>,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        SeededRandom { rng: Mutex::new(ChaCha20Rng::seed_from_u64(seed)) }
    }
}

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.rng.lock().map_err(|_| GetRandomFailed)?.fill_bytes(buf);
        Ok(())
    }
}

/// X25519 with private keys drawn from a [`SeededRandom`].
#[derive(Debug)]
struct SeededX25519 {
    rng: &'static SeededRandom,
}

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut secret = [0u8; 32];
        self.rng.fill(&mut secret).map_err(|_| Error::FailedToGetRandomBytes)?;
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Exchange { secret, public: public.to_bytes() }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Exchange {
    secret: x25519_dalek::StaticSecret,
    public: [u8; 32],
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        let peer: [u8; 32] =
            peer_pub_key.try_into().map_err(|_| Error::from(PeerMisbehaved::InvalidKeyShare))?;
        let shared = self.secret.diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        // A low-order peer key gives an all-zero secret: refuse it, as ring does.
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_random_is_reproducible_and_seed_dependent() {
        let (a, b, c) = (SeededRandom::new(1), SeededRandom::new(1), SeededRandom::new(2));
        let (mut x, mut y, mut z) = ([0u8; 32], [0u8; 32], [0u8; 32]);
        a.fill(&mut x).unwrap();
        b.fill(&mut y).unwrap();
        c.fill(&mut z).unwrap();
        assert_eq!(x, y);
        assert_ne!(x, z);
    }

    #[test]
    fn x25519_agrees_with_itself() {
        let g = SeededX25519 { rng: Box::leak(Box::new(SeededRandom::new(3))) };
        let (a, b) = (g.start().unwrap(), g.start().unwrap());
        let (pa, pb) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        let (sa, sb) = (a.complete(&pb).unwrap(), b.complete(&pa).unwrap());
        assert_eq!(sa.secret_bytes(), sb.secret_bytes());
        assert!(g.start().unwrap().complete(&[0u8; 32]).is_err());
    }
}
