//! `ChunkHash`: the blake3 address of a chunk or of a manifest encoding.
//!
//! Owns the hex text form and the serde form (32 raw bytes). It must not know
//! where blobs are stored or what they contain.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::PkgError;

/// The blake3 hash of a chunk or a manifest encoding: 32 bytes.
///
/// Shown as 64 lowercase hex characters; serialized as 32 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkHash([u8; 32]);

impl ChunkHash {
    /// The blake3 hash of `bytes`.
    pub fn of(bytes: &[u8]) -> ChunkHash {
        ChunkHash(*blake3::hash(bytes).as_bytes())
    }

    /// Wraps 32 raw bytes already known to be a blake3 hash.
    pub fn from_bytes(bytes: [u8; 32]) -> ChunkHash {
        ChunkHash(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The first 12 hex characters, for logs and tables.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(12);
        s
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<blake3::Hash> for ChunkHash {
    fn from(h: blake3::Hash) -> ChunkHash {
        ChunkHash(*h.as_bytes())
    }
}

impl FromStr for ChunkHash {
    type Err = PkgError;

    fn from_str(s: &str) -> Result<ChunkHash, PkgError> {
        let bad = |why| PkgError::BadHash {
            text: s.chars().take(80).collect(),
            why,
        };
        if s.len() != 64 {
            return Err(bad("expected 64 hex characters"));
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hi = hex_val(pair[0]).ok_or_else(|| bad("not lowercase hex"))?;
            let lo = hex_val(pair[1]).ok_or_else(|| bad("not lowercase hex"))?;
            out[i] = hi << 4 | lo;
        }
        Ok(ChunkHash(out))
    }
}

/// Lowercase hex only, so that a hash has exactly one text form (file names).
fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl Serialize for ChunkHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Hex in JSON (what operators read), raw bytes on the wire.
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ChunkHash, D::Error> {
        if d.is_human_readable() {
            d.deserialize_str(HashVisitor)
        } else {
            d.deserialize_bytes(HashVisitor)
        }
    }
}

struct HashVisitor;

impl<'de> Visitor<'de> for HashVisitor {
    type Value = ChunkHash;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("32 bytes of blake3 hash")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ChunkHash, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ChunkHash, E> {
        let arr: [u8; 32] = v
            .try_into()
            .map_err(|_| E::invalid_length(v.len(), &self))?;
        Ok(ChunkHash(arr))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<ChunkHash, A::Error> {
        let mut out = [0u8; 32];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(33, &self));
        }
        Ok(ChunkHash(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_hex_and_msgpack_is_bytes() {
        let h = ChunkHash::of(b"x");
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(j, format!("\"{}\"", h.to_hex()));
        assert_eq!(serde_json::from_str::<ChunkHash>(&j).unwrap(), h);
        let m = rmp_serde::to_vec_named(&h).unwrap();
        assert_eq!(m.len(), 34);
        assert_eq!(rmp_serde::from_slice::<ChunkHash>(&m).unwrap(), h);
    }

    #[test]
    fn hex_round_trip() {
        let h = ChunkHash::of(b"hello");
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(s, s.to_lowercase());
        assert_eq!(format!("{h:?}"), s);
        assert_eq!(s.parse::<ChunkHash>().unwrap(), h);
        assert_eq!(h.short(), &s[..12]);
        assert_eq!(h.to_hex(), s);
    }

    #[test]
    fn bad_hex_is_refused_clearly() {
        let e = "abc".parse::<ChunkHash>().unwrap_err();
        assert!(e.to_string().contains("64 hex"), "{e}");
        let upper = ChunkHash::of(b"x").to_string().to_uppercase();
        let e = upper.parse::<ChunkHash>().unwrap_err();
        assert!(e.to_string().contains("not lowercase hex"), "{e}");
        let e = "z".repeat(64).parse::<ChunkHash>().unwrap_err();
        assert!(matches!(e, PkgError::BadHash { .. }));
        // Multi-byte characters with a byte length of 64 must not panic.
        assert!("é".repeat(32).parse::<ChunkHash>().is_err());
    }

    #[test]
    fn serde_is_32_raw_bytes() {
        let h = ChunkHash::of(b"payload");
        let enc = rmp_serde::to_vec_named(&h).unwrap();
        // msgpack bin8: 0xc4, len 32, then the bytes.
        assert_eq!(enc.len(), 34);
        assert_eq!(&enc[..2], &[0xc4, 32]);
        assert_eq!(&enc[2..], h.as_bytes());
        let back: ChunkHash = rmp_serde::from_slice(&enc).unwrap();
        assert_eq!(back, h);
        let short = rmp_serde::to_vec_named(&serde_bytes::Bytes::new(&[1, 2, 3])).unwrap();
        assert!(rmp_serde::from_slice::<ChunkHash>(&short).is_err());
    }

    #[test]
    fn ordered_and_hashable() {
        let a = ChunkHash::from_bytes([0; 32]);
        let b = ChunkHash::from_bytes([1; 32]);
        assert!(a < b);
        let set: std::collections::HashSet<_> = [a, b, a].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(ChunkHash::from(blake3::hash(b"q")), ChunkHash::of(b"q"));
    }
}
