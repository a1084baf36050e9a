//! End-to-end job signing: HQ's Ed25519 key, separate from the TLS CA, and
//! the public half that every agent holds with its identity. A relay passes
//! signed orders through; it cannot make one.

use super::files::{bad, read_file, read_private, write_file};
use super::TlsError;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// File name of HQ's private signing key (in the CA directory).
pub const SIGN_KEY: &str = "sign.key";
/// File name of HQ's public signing key (in the CA directory and every
/// identity directory `hq cert issue` writes).
pub const SIGN_PUB: &str = "sign.pub";

/// HQ's job-signing key.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// Creates a key and writes `dir/sign.key` (0600) and `dir/sign.pub`.
    pub fn create(dir: &Path) -> Result<SigningKey, TlsError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| TlsError::Config("cannot generate a signing key".into()))?;
        let key_path = dir.join(SIGN_KEY);
        write_file(&key_path, pkcs8.as_ref(), 0o600)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| bad(&key_path, format!("not an ed25519 key: {e}")))?;
        write_file(&dir.join(SIGN_PUB), pair.public_key().as_ref(), 0o644)?;
        Ok(SigningKey { pair })
    }

    /// Loads `dir/sign.key` (refused when readable by group or others).
    pub fn load(dir: &Path) -> Result<SigningKey, TlsError> {
        let path = dir.join(SIGN_KEY);
        let der = read_private(&path)?;
        let pair = Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|e| bad(&path, format!("not an ed25519 key: {e}")))?;
        Ok(SigningKey { pair })
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// The public half.
    pub fn verify_key(&self) -> VerifyKey {
        VerifyKey::from_bytes(self.pair.public_key().as_ref().to_vec())
    }
}

/// HQ's public job-signing key. Remembers the signatures it has already
/// checked, so the agents of a swarm (sharing one key) verify each order once.
#[derive(Clone, Debug)]
pub struct VerifyKey {
    key: Vec<u8>,
    verified: Memory,
}

/// Signatures (with a digest of their message) already verified.
type Memory = Arc<Mutex<HashSet<Vec<u8>>>>;

impl PartialEq for VerifyKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for VerifyKey {}

/// Signatures remembered per key, at most (then the memory starts afresh).
/// Room for every placement of a swarm of agents (one each, ~100 bytes)
/// and the orders of their jobs: at 4,096, a swarm of 5,000 started afresh
/// within every job and verified each agent's placement again (a seventh
/// of its CPU in a ping job).
const VERIFIED_CACHE: usize = 1 << 16;

impl VerifyKey {
    /// Loads a public key file (32 raw bytes).
    pub fn load(path: &Path) -> Result<VerifyKey, TlsError> {
        let bytes = read_file(path)?;
        if bytes.len() != 32 {
            return Err(bad(
                path,
                format!(
                    "expected a 32-byte ed25519 public key, found {} bytes",
                    bytes.len()
                ),
            ));
        }
        Ok(VerifyKey::from_bytes(bytes))
    }

    fn from_bytes(key: Vec<u8>) -> VerifyKey {
        // One memory per key per process: the agents of a swarm each load
        // the same key from their own identity directory.
        static MEMORIES: Mutex<Vec<(Vec<u8>, Memory)>> = Mutex::new(Vec::new());
        let verified = match MEMORIES.lock() {
            Ok(mut m) => match m.iter().find(|(k, _)| *k == key) {
                Some((_, v)) => v.clone(),
                None => {
                    let v: Memory = Default::default();
                    m.push((key.clone(), v.clone()));
                    v
                }
            },
            Err(_) => Default::default(),
        };
        VerifyKey { key, verified }
    }

    /// Whether `sig` is HQ's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        // Remembered by signature and message together: a cached signature
        // never vouches for another message.
        let mut id = Vec::with_capacity(sig.len() + 32);
        id.extend_from_slice(sig);
        id.extend_from_slice(&ring::digest::digest(&ring::digest::SHA256, msg).as_ref()[..32]);
        if let Ok(v) = self.verified.lock() {
            if v.contains(&id) {
                return true;
            }
        }
        let ok = UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(msg, sig)
            .is_ok();
        if ok {
            if let Ok(mut v) = self.verified.lock() {
                if v.len() >= VERIFIED_CACHE {
                    v.clear();
                }
                v.insert(id);
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::create(dir.path()).unwrap();
        let sig = k.sign(b"job 1 attempt 1");
        let v = VerifyKey::load(&dir.path().join(SIGN_PUB)).unwrap();
        assert!(v.verify(b"job 1 attempt 1", &sig));
        assert!(!v.verify(b"job 1 attempt 2", &sig));
        // Remembered: still right, and never for another message.
        assert!(v.verify(b"job 1 attempt 1", &sig));
        assert!(!v.verify(b"job 1 attempt 3", &sig));
        let k2 = SigningKey::load(dir.path()).unwrap();
        assert_eq!(k2.verify_key(), v);
        // Another key's signature is refused.
        let other = tempfile::tempdir().unwrap();
        let k3 = SigningKey::create(other.path()).unwrap();
        assert!(!v.verify(b"job 1 attempt 1", &k3.sign(b"job 1 attempt 1")));
        std::fs::write(dir.path().join("short.pub"), [0u8; 5]).unwrap();
        let e = VerifyKey::load(&dir.path().join("short.pub")).unwrap_err();
        assert!(e.to_string().contains("32-byte"), "{e}");
    }
}
