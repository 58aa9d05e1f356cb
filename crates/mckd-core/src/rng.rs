//! Saving and restoring the state of the seeded generators (`ChaCha8`) for checkpoints.

use rand_chacha::ChaCha8Rng;

/// Bytes of a serialised generator: seed (32), stream (8), word position (16).
pub const RNG_STATE_BYTES: usize = 56;

/// The exact state of `rng`: the generator restored from it draws the same numbers.
pub fn rng_state(rng: &ChaCha8Rng) -> [u8; RNG_STATE_BYTES] {
    let mut out = [0u8; RNG_STATE_BYTES];
    out[..32].copy_from_slice(&rng.get_seed());
    out[32..40].copy_from_slice(&rng.get_stream().to_le_bytes());
    out[40..].copy_from_slice(&rng.get_word_pos().to_le_bytes());
    out
}

/// The generator whose state [`rng_state`] returned; `None` if `bytes` has the wrong length.
pub fn rng_from_state(bytes: &[u8]) -> Option<ChaCha8Rng> {
    use rand::SeedableRng;
    if bytes.len() != RNG_STATE_BYTES {
        return None;
    }
    let seed: [u8; 32] = bytes[..32].try_into().ok()?;
    let stream = u64::from_le_bytes(bytes[32..40].try_into().ok()?);
    let pos = u128::from_le_bytes(bytes[40..].try_into().ok()?);
    let mut rng = ChaCha8Rng::from_seed(seed);
    rng.set_stream(stream);
    rng.set_word_pos(pos);
    Some(rng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn a_restored_generator_continues_the_stream() {
        let mut a = ChaCha8Rng::seed_from_u64(42);
        // An odd number of u32 draws leaves the position inside a 64-bit word.
        for _ in 0..37 {
            let _: u32 = a.random();
        }
        let mut b = rng_from_state(&rng_state(&a)).unwrap();
        let xs: Vec<u64> = (0..100).map(|_| a.random()).collect();
        let ys: Vec<u64> = (0..100).map(|_| b.random()).collect();
        assert_eq!(xs, ys);
        assert!(rng_from_state(&[0u8; 10]).is_none());
    }
}
