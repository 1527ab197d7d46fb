//! The bytes a client sends: a deterministic stream per connection, so that what comes back can
//! be checked byte for byte without keeping a copy, and a run is a function of its seed.

/// An endless byte stream determined by a key (xorshift64*; quality is irrelevant, only
/// determinism and cheapness matter).
#[derive(Debug, Clone)]
pub struct Payload {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Payload {
    /// The stream for `key` (e.g. the scenario seed mixed with the connection's ordinal).
    pub fn new(key: u64) -> Self {
        // splitmix64 of the key, so nearby keys give unrelated streams; never zero.
        let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Payload { state: z | 1, word: [0; 8], used: 8 }
    }

    /// The key of connection `ordinal` of a run with `seed`.
    pub fn key(seed: u64, ordinal: u64) -> u64 {
        seed.rotate_left(32) ^ ordinal
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_depends_only_on_the_key_not_on_how_it_is_read() {
        let mut whole = vec![0; 100];
        Payload::new(7).fill(&mut whole);
        let mut parts = vec![0; 100];
        let mut p = Payload::new(7);
        for chunk in parts.chunks_mut(13) {
            p.fill(chunk);
        }
        assert_eq!(whole, parts);
        let mut other = vec![0; 100];
        Payload::new(8).fill(&mut other);
        assert_ne!(whole, other);
        assert_ne!(Payload::key(1, 2), Payload::key(2, 1));
    }
}
