//! Keys: fixed-size digests of whatever identifies a client.
//!
//! Identities (a token, an IP, an API key, a route) are hashed into a 128-bit [`Key`] with a keyed
//! hash, so a store never holds a raw secret, and a 100 KB header costs the same memory as a
//! short one.

use std::fmt;
use std::hash::Hasher;

use siphasher::sip128::{Hasher128, SipHasher13};

/// A 128-bit digest that identifies one client (or one client on one endpoint) to a rule.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(u128);

impl Key {
    /// A key from a digest computed elsewhere.
    pub const fn from_u128(digest: u128) -> Self {
        Self(digest)
    }

    /// The digest.
    pub const fn as_u128(self) -> u128 {
        self.0
    }

    /// The digest as 32 lowercase hex digits: how stores spell the key.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:032x})", self.0)
    }
}

/// The secret that keys the digest.
///
/// Every process that shares limits (through Redis) must use the same secret, or they will not
/// find each other's keys. Set your own: with the public default, anyone who can read the store
/// can test guesses (an IP address has few possible values) against the digests.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeySecret {
    k0: u64,
    k1: u64,
}

impl KeySecret {
    /// The public default secret.
    pub const DEFAULT: KeySecret = KeySecret {
        k0: 0x746f_6c6c_6761_7465,
        k1: 0x6b65_795f_7365_6372,
    };

    /// A secret from 16 bytes (for instance from an environment variable or a secret store).
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            k0[i] = bytes[i];
            k1[i] = bytes[i + 8];
            i += 1;
        }
        Self {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }

    /// Starts a key.
    pub fn key(&self) -> KeyBuilder {
        KeyBuilder(SipHasher13::new_with_keys(self.k0, self.k1))
    }
}

impl Default for KeySecret {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeySecret(..)")
    }
}

/// Hashes the parts of an identity into a [`Key`].
///
/// Each part is length-prefixed, so `("ab", "c")` and `("a", "bc")` differ, and an absent part
/// (`part(b"")`) differs from a missing one only if the caller adds or omits it consistently.
///
/// ```
/// use tollgate_core::KeySecret;
///
/// let secret = KeySecret::DEFAULT;
/// let a = secret.key().part(b"token-1").part(b"203.0.113.7").finish();
/// let b = secret.key().part(b"token-1").part(b"203.0.113.8").finish();
/// assert_ne!(a, b);
/// ```
#[derive(Clone)]
pub struct KeyBuilder(SipHasher13);

impl KeyBuilder {
    /// Adds one part.
    pub fn part(mut self, bytes: &[u8]) -> Self {
        self.0.write_u64(bytes.len() as u64);
        self.0.write(bytes);
        self
    }

    /// Adds one part in place.
    pub fn push(&mut self, bytes: &[u8]) {
        self.0.write_u64(bytes.len() as u64);
        self.0.write(bytes);
    }

    /// The digest.
    pub fn finish(&self) -> Key {
        Key(self.0.finish128().as_u128())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_unambiguous_and_secret_matters() {
        let s = KeySecret::DEFAULT;
        assert_ne!(
            s.key().part(b"ab").part(b"c").finish(),
            s.key().part(b"a").part(b"bc").finish()
        );
        let other = KeySecret::from_bytes(*b"0123456789abcdef");
        assert_ne!(s.key().part(b"x").finish(), other.key().part(b"x").finish());
        assert_eq!(s.key().part(b"x").finish(), s.key().part(b"x").finish());
        assert_eq!(s.key().part(b"x").finish().to_hex().len(), 32);
    }

    /// Every byte of a secret keys the digest: secrets one byte apart give other keys, and the
    /// default secret's own bytes rebuild it.
    #[test]
    fn every_byte_of_a_secret_changes_the_keys() {
        let mut default = [0u8; 16];
        default[..8].copy_from_slice(&0x746f_6c6c_6761_7465u64.to_le_bytes());
        default[8..].copy_from_slice(&0x6b65_795f_7365_6372u64.to_le_bytes());
        assert!(KeySecret::from_bytes(default) == KeySecret::DEFAULT);
        let base = KeySecret::from_bytes([0; 16]).key().part(b"x").finish();
        for i in 0..16 {
            let mut bytes = [0u8; 16];
            bytes[i] = 1;
            let key = KeySecret::from_bytes(bytes).key().part(b"x").finish();
            assert_ne!(key, base, "byte {i} of the secret is ignored");
        }
    }

    /// `push` adds a part exactly as `part` does: the identity is hashed, length-prefixed.
    #[test]
    fn push_hashes_a_part_like_part() {
        let s = KeySecret::DEFAULT;
        let mut pushed = s.key();
        pushed.push(b"ab");
        pushed.push(b"c");
        assert_eq!(pushed.finish(), s.key().part(b"ab").part(b"c").finish());
        assert_ne!(pushed.finish(), s.key().finish());
        let mut other = s.key();
        other.push(b"a");
        other.push(b"bc");
        assert_ne!(other.finish(), pushed.finish());
    }

    /// Debug output names the digest in hex and never shows a secret.
    #[test]
    fn debug_shows_the_digest_and_hides_the_secret() {
        assert_eq!(
            format!("{:?}", Key::from_u128(0xab)),
            format!("Key({:032x})", 0xab)
        );
        let secret = KeySecret::from_bytes(*b"0123456789abcdef");
        assert_eq!(format!("{secret:?}"), "KeySecret(..)");
    }
}
