//! Text normalization and fast text hashing shared by the operators: [`normalize`], BLAKE3 [`content_hash`]
//! and the stable 64-bit [`hash64`] (with its mixing primitives).

/// Lowercases (Unicode), strips every char that is neither alphanumeric nor whitespace, collapses
/// whitespace runs to one space and trims.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    normalize_into(text, &mut out);
    out
}

/// [`normalize`] into a reused buffer (cleared first).
pub fn normalize_into(text: &str, out: &mut String) {
    out.clear();
    out.reserve(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_ascii() {
            if c.is_ascii_alphanumeric() {
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                out.push(c.to_ascii_lowercase());
            } else if c.is_whitespace() {
                pending_space = !out.is_empty();
            }
        } else if c.is_alphanumeric() {
            // Some lowercase mappings add combining marks ('İ' -> "i\u{307}"); dropping them keeps
            // `normalize` idempotent.
            for lower in c.to_lowercase().filter(|l| l.is_alphanumeric()) {
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                out.push(lower);
            }
        } else if c.is_whitespace() {
            pending_space = !out.is_empty();
        }
    }
}

/// The exact-match key: the first 16 bytes of BLAKE3 over the normalized text.
pub fn content_hash(normalized: &str) -> u128 {
    let hash = blake3::hash(normalized.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash.as_bytes()[..16]);
    u128::from_le_bytes(bytes)
}

pub(crate) const K0: u64 = 0xa076_1d64_78bd_642f;
pub(crate) const K1: u64 = 0xe703_7ed1_a0b4_28db;
pub(crate) const K2: u64 = 0x8ebc_6af0_9c88_c6e3;

/// 64x64 -> 128 multiply, folded back to 64 bits.
#[inline(always)]
pub(crate) fn fold_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The splitmix64 / murmur3 finalizer: a bijective avalanche of 64 bits.
#[inline(always)]
pub(crate) fn fmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The splitmix64 generator: advances `state` and returns its next well-mixed output.
pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    fmix64(*state)
}

/// A fast, stable (platform- and release-independent) 64-bit hash of bytes, used for shingles.
/// Not collision-resistant against an adversary; BLAKE3 covers the exact mode.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h = K0 ^ (bytes.len() as u64).wrapping_mul(K1);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = fold_mul(v ^ K2, h ^ K1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rest.len()].copy_from_slice(rest);
        h = fold_mul(u64::from_le_bytes(buf) ^ K0, h ^ K2);
    }
    fmix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_lowercases_strips_punctuation_and_collapses_whitespace() {
        assert_eq!(normalize("  Hello,\t\nWORLD!!  "), "hello world");
        assert_eq!(normalize("a - b"), "a b");
        assert_eq!(normalize("don't"), "dont");
        assert_eq!(normalize("ÉCOLE   Straße 42"), "école straße 42");
        assert_eq!(normalize("?!..."), "");
        let once = normalize("İstanbul — ÇA VA?");
        assert_eq!(normalize(&once), once);
    }
}
