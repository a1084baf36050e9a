//! Dashboard sessions: the cookie a redeemed login link sets, its expiry, and
//! the per-session CSRF token every action must carry.
//!
//! Pure bookkeeping in memory (a restart of HQ signs everyone out); never
//! issues login tokens (HQ's `Console` does) and never reads fleet data.

use axum::http::HeaderMap;
use std::collections::HashMap;
use std::sync::Mutex;

/// The session cookie's name.
pub const COOKIE: &str = "relaytree_session";

/// Sessions opened by redeemed login links.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// One browser's session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// Must accompany every action (header `x-csrf-token` or form field `csrf`).
    pub csrf: String,
    /// Unix ms after which the session is refused.
    pub expires_ms: u64,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session until `now_ms + ttl_ms`; returns its cookie value.
    pub fn open(&self, now_ms: u64, ttl_ms: u64) -> String {
        let id = token();
        let mut m = self.lock();
        m.retain(|_, s| s.expires_ms > now_ms);
        m.insert(
            id.clone(),
            Session {
                csrf: token(),
                expires_ms: now_ms + ttl_ms,
            },
        );
        id
    }

    /// The live session named by the request's cookie, if any.
    pub fn find(&self, headers: &HeaderMap, now_ms: u64) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let mut m = self.lock();
        match m.get(id) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                m.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends the session named by the request's cookie.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.lock().remove(id);
        }
    }
}

/// 32 random bytes, hex: session ids and CSRF tokens.
fn token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `Set-Cookie` value for a new session.
pub fn set_cookie(id: &str, max_age_s: u64, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that drops the session cookie.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

/// Whether `given` is the session's CSRF token, compared in constant time.
pub fn csrf_ok(session: &Session, given: Option<&str>) -> bool {
    let Some(given) = given else { return false };
    let (a, b) = (session.csrf.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            HeaderValue::from_str(v).unwrap(),
        );
        h
    }

    #[test]
    fn cookies_are_found_by_name() {
        let cases = [
            ("relaytree_session=abc", Some("abc")),
            ("a=1; relaytree_session=abc; b=2", Some("abc")),
            ("xrelaytree_session=abc", None),
            ("relaytree_session", None),
            ("", None),
        ];
        for (header, want) in cases {
            assert_eq!(cookie(&with_cookie(header), COOKIE), want, "{header}");
        }
    }

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::default();
        let id = s.open(1_000, 500);
        let h = with_cookie(&format!("{COOKIE}={id}"));
        let found = s.find(&h, 1_499).expect("live");
        assert_eq!(found.csrf.len(), 64);
        assert!(s.find(&h, 1_500).is_none(), "expired");
        let id = s.open(1_000, 500);
        let h = with_cookie(&format!("{COOKIE}={id}"));
        s.close(&h);
        assert!(s.find(&h, 1_001).is_none(), "closed");
        assert!(s
            .find(&with_cookie("relaytree_session=forged"), 1)
            .is_none());
    }

    #[test]
    fn csrf_tokens_must_match_exactly() {
        let s = Session {
            csrf: "abcd".into(),
            expires_ms: 1,
        };
        assert!(csrf_ok(&s, Some("abcd")));
        for bad in [None, Some(""), Some("abc"), Some("abce"), Some("abcdd")] {
            assert!(!csrf_ok(&s, bad), "{bad:?}");
        }
    }

    #[test]
    fn the_cookie_is_strict_and_http_only() {
        let c = set_cookie("x", 43_200, false);
        assert_eq!(
            c,
            "relaytree_session=x; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200"
        );
        assert!(set_cookie("x", 1, true).ends_with("; Secure"));
    }
}
