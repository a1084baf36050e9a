//! HQ's face towards the dashboard: a [`Console`] handle that answers the
//! same admin requests the CLI sends, and the [`Door`] that issues one-time
//! login tokens (`hq web login`) and redeems them.
//!
//! Owns no HTTP, no cookies and no sessions (those are `web`'s); hands out
//! nothing but answers built from HQ's own state, never the state itself.

use super::{HqError, HqState};
use crate::proto::{AdminRequest, AdminResponse};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// How long a login link works when nobody opens it.
pub const LOGIN_TTL_MS: u64 = 5 * 60 * 1000;

/// Login tokens not yet used, and where the dashboard is served.
#[derive(Default)]
pub(crate) struct Door {
    inner: Mutex<DoorInner>,
}

#[derive(Default)]
struct DoorInner {
    /// `http://HOST:PORT` or `https://...`, once the dashboard listens.
    base: Option<String>,
    /// token -> expiry, unix ms.
    tokens: HashMap<String, u64>,
}

impl Door {
    fn lock(&self) -> std::sync::MutexGuard<'_, DoorInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh one-time login URL, or an error when no dashboard is served.
    pub(crate) fn issue(&self, now_ms: u64) -> Result<String, HqError> {
        let mut d = self.lock();
        let base = d.base.clone().ok_or_else(|| {
            HqError::Refused("hq serves no dashboard: start hq serve with --http ADDR".into())
        })?;
        d.tokens.retain(|_, exp| *exp > now_ms);
        let token = random_token();
        d.tokens.insert(token.clone(), now_ms + LOGIN_TTL_MS);
        Ok(format!("{base}/login?token={token}"))
    }

    /// True once for a token issued and unexpired; false ever after.
    fn redeem(&self, token: &str, now_ms: u64) -> bool {
        let mut d = self.lock();
        d.tokens.remove(token).is_some_and(|exp| exp > now_ms)
    }
}

/// 32 random bytes, hex.
fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the dashboard may ask of HQ. Cheap to clone.
#[derive(Clone)]
pub struct Console {
    st: Arc<HqState>,
}

impl Console {
    pub(crate) fn new(st: Arc<HqState>) -> Console {
        Console { st }
    }

    /// Answers an admin request exactly as HQ answers the CLI.
    pub async fn request(&self, req: AdminRequest) -> Result<AdminResponse, HqError> {
        super::sessions::answer(&self.st, req, 0).await
    }

    /// Every known client and its home relay.
    pub fn clients(&self) -> Result<Vec<crate::proto::ClientEntry>, HqError> {
        super::clients::list(&self.st, &Default::default())
    }

    /// Bumped after every durable change of leaves.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.st.changed.subscribe()
    }

    /// Login links name this base (`http://HOST:PORT`) from now on.
    pub fn serve_at(&self, base: String) {
        self.st.door.lock().base = Some(base);
    }

    /// Whether `token` is a login token issued by `hq web login`, unexpired
    /// and unused. Uses it up.
    pub fn redeem(&self, token: &str) -> bool {
        self.st.door.redeem(token, crate::proto::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_work_once_and_expire() {
        let d = Door::default();
        assert!(d.issue(0).is_err(), "no dashboard, no link");
        d.lock().base = Some("http://127.0.0.1:1".into());
        let url = d.issue(1_000).unwrap();
        let tok = url.rsplit('=').next().unwrap().to_string();
        assert!(url.starts_with("http://127.0.0.1:1/login?token="));
        assert_eq!(tok.len(), 64);
        assert!(!d.redeem("nope", 1_001));
        assert!(d.redeem(&tok, 1_001));
        assert!(!d.redeem(&tok, 1_002), "used twice");
        let url = d.issue(1_000).unwrap();
        let tok = url.rsplit('=').next().unwrap().to_string();
        assert!(!d.redeem(&tok, 1_000 + LOGIN_TTL_MS), "expired");
        assert!(!d.redeem(&tok, 1_000), "an expired token is gone");
    }
}
