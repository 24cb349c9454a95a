//! Sora-style identifiers: 26 characters of Crockford base32 (a ULID: time-ordered, random).

use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new 26-character id (48-bit millisecond time + 80 random bits), like Sora's connection ids.
pub fn new_id() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    encode(((millis & 0xffff_ffff_ffff) << 80) | random)
}

/// Encodes 128 bits as 26 Crockford base32 characters (the top character carries 3 bits).
fn encode(mut value: u128) -> String {
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 0x1f) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_26_crockford_characters_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| ALPHABET.contains(&c)), "{a}");
        assert_ne!(a, b);
    }

    #[test]
    fn encoding_is_big_endian() {
        assert_eq!(encode(0), "0".repeat(26));
        assert_eq!(encode(31), format!("{}Z", "0".repeat(25)));
        assert_eq!(&encode(u128::MAX)[..1], "7");
    }
}
