//! Enrollment tokens and certificates at HQ: `hq token create` (tokens kept
//! only as hashes, with a role, an expiry and uses left), signing a new
//! node's CSR once its token, name and CSR check out, and renewing a
//! running node's certificate for a relay that speaks for its subtree.
//! Every token, enrollment, renewal and refusal is logged with name and role.
//!
//! Never sees a private key: nodes make theirs and send CSRs.

use super::{HqError, HqState};
use crate::proto::{now_ms, CertGrant, CertRequest, NodeName, Role, TokenCreated};
use crate::store::keys::Name;
use crate::tls::Ca;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing::{info, warn};

/// Certificates HQ signs are valid this long unless `hq serve` is told otherwise.
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(90 * 86_400);

/// What HQ signs with, loaded once at start-up.
pub(crate) struct Authority {
    /// The CA (its key signs CSRs).
    pub ca: Ca,
    /// `sha256:HEX` of the CA certificate.
    pub ca_hash: String,
    /// HQ's public job-signing key, handed to every new node.
    pub sign_pub: Vec<u8>,
    /// Validity of the certificates signed here.
    pub validity: Duration,
}

/// A token as stored (under the SHA-256 of its text; the text is never kept).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct TokenRecord {
    /// The role a node enrolling with it gets.
    pub role: Role,
    /// Refused after this (unix ms).
    pub expires_ms: u64,
    /// Enrollments it still allows.
    pub uses_left: u32,
    /// When it was made.
    pub created_ms: u64,
}

/// A name HQ signed a certificate for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct IssuedRecord {
    pub role: Role,
    pub not_after_ms: u64,
    pub at_ms: u64,
    pub renewals: u32,
}

fn token_key(token: &str) -> Vec<u8> {
    crate::tls::enroll::sha256(token.as_bytes()).to_vec()
}

/// A short, harmless id of a token for logs: the start of its hash.
fn token_id(token: &str) -> String {
    crate::tls::enroll::ca_hash(token.as_bytes())[7..19].to_string()
}

/// Whether a token lets a node of `role` enroll at `now`.
pub(crate) fn check_token(rec: Option<&TokenRecord>, role: Role, now: u64) -> Result<(), String> {
    let Some(rec) = rec else {
        return Err("unknown enrollment token".into());
    };
    if rec.expires_ms <= now {
        return Err("enrollment token expired".into());
    }
    if rec.uses_left == 0 {
        return Err("enrollment token already used".into());
    }
    if rec.role != role {
        return Err(format!(
            "enrollment token is for {}s, not {}s",
            rec.role, role
        ));
    }
    Ok(())
}

/// `hq token create`.
pub(crate) async fn create_token(
    st: &HqState,
    role: Role,
    ttl_ms: u64,
    uses: u32,
) -> Result<TokenCreated, HqError> {
    if !matches!(role, Role::Agent | Role::Relay) {
        return Err(HqError::Refused(format!(
            "tokens enroll agents and relays, not {role}s"
        )));
    }
    if uses == 0 || ttl_ms == 0 {
        return Err(HqError::Refused(
            "a token needs at least one use and a ttl above 0".into(),
        ));
    }
    let auth = authority(st)?;
    let mut secret = [0u8; 20];
    rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
    let token: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let now = now_ms();
    let rec = TokenRecord {
        role,
        expires_ms: now.saturating_add(ttl_ms),
        uses_left: uses,
        created_ms: now,
    };
    st.tokens.put(&token_key(&token), &rec)?;
    st.store.durable().await?;
    info!(token = %token_id(&token), %role, uses, expires_ms = rec.expires_ms, "enrollment token created");
    Ok(TokenCreated {
        token,
        ca_hash: auth.ca_hash.clone(),
        expires_ms: rec.expires_ms,
    })
}

fn authority(st: &HqState) -> Result<&Authority, HqError> {
    st.authority
        .get()
        .ok_or_else(|| HqError::Refused("hq is not ready to sign certificates".into()))
}

/// Answers a certificate request that reached HQ: from its own listener
/// anonymously (`via` None: an enrollment of a relay) or from relay `via`
/// (an enrollment passed up, or a renewal in its subtree).
pub(crate) async fn certify(
    st: &HqState,
    via: Option<&NodeName>,
    req: CertRequest,
) -> Result<CertGrant, String> {
    let via_text = via.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let r = match &req.token {
        Some(t) => enroll(st, via, &req, t).await,
        None => renew(st, via, &req).await,
    };
    if let Err(reason) = &r {
        let what = if req.token.is_some() {
            "enrollment refused"
        } else {
            "renewal refused"
        };
        warn!(name = %req.name, role = %req.role, via = %via_text, %reason, "{what}");
    }
    r
}

/// Whether `name` may not be given to a new node: revoked, or in use.
fn name_taken(st: &HqState, name: &NodeName) -> Result<Option<String>, String> {
    let k = Name(name.clone());
    let err = |e: crate::store::StoreError| e.to_string();
    if st.denied.contains(&k).map_err(err)? {
        return Ok(Some(format!("name {name} is revoked")));
    }
    if *name == st.me
        || st.relays.contains(&k).map_err(err)?
        || st.clients.contains(&k).map_err(err)?
        || st.issued.contains(&k).map_err(err)?
        || st.seen.contains(&k).map_err(err)?
    {
        return Ok(Some(format!("name {name} is already in use")));
    }
    Ok(None)
}

async fn enroll(
    st: &HqState,
    via: Option<&NodeName>,
    req: &CertRequest,
    token: &str,
) -> Result<CertGrant, String> {
    let auth = authority(st).map_err(|e| e.to_string())?;
    if !matches!(req.role, Role::Agent | Role::Relay) {
        return Err(format!("{}s cannot enroll", req.role));
    }
    if via.is_none() && req.role == Role::Agent {
        return Err("agents enroll through their relay, not at hq".into());
    }
    let (cert_pem, not_after) = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        let tk = token_key(token);
        let rec: Option<TokenRecord> = st.tokens.get(&tk).map_err(|e| e.to_string())?;
        check_token(rec.as_ref(), req.role, now_ms())?;
        if let Some(why) = name_taken(st, &req.name)? {
            return Err(why);
        }
        let cert_pem = auth
            .ca
            .sign_csr(&req.csr_pem, req.role, &req.name, auth.validity)
            .map_err(|e| e.to_string())?;
        let not_after = not_after_of(&cert_pem);
        let mut rec = rec.ok_or("unknown enrollment token")?;
        rec.uses_left -= 1;
        st.tokens.put(&tk, &rec).map_err(|e| e.to_string())?;
        st.issued
            .put(
                &Name(req.name.clone()),
                &IssuedRecord {
                    role: req.role,
                    not_after_ms: not_after,
                    at_ms: now_ms(),
                    renewals: 0,
                },
            )
            .map_err(|e| e.to_string())?;
        (cert_pem, not_after)
    };
    st.store.durable().await.map_err(|e| e.to_string())?;
    info!(name = %req.name, role = %req.role, token = %token_id(token), not_after_ms = not_after, "node enrolled");
    Ok(grant(auth, cert_pem))
}

fn not_after_of(cert_pem: &str) -> u64 {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .ok()
        .and_then(|d| crate::tls::enroll::validity_ms(&d).ok())
        .map(|(_, na)| na)
        .unwrap_or(0)
}

fn grant(auth: &Authority, cert_pem: String) -> CertGrant {
    CertGrant {
        cert_pem,
        ca_pem: auth.ca.cert_pem().to_string(),
        sign_pub: auth.sign_pub.clone(),
    }
}

/// Whether `name` (of `role`) lives in the subtree of relay `via`: the
/// relay itself, a relay below it, or an agent whose home is one of those.
fn in_subtree(st: &HqState, via: &NodeName, name: &NodeName, role: Role) -> Result<bool, String> {
    let err = |e: crate::store::StoreError| e.to_string();
    let mut at = match role {
        Role::Relay => name.clone(),
        Role::Agent => match st.clients.get(&Name(name.clone())).map_err(err)? {
            Some(c) => c.relay,
            None => return Ok(false),
        },
        _ => return Ok(false),
    };
    for _ in 0..64 {
        if at == *via {
            return Ok(true);
        }
        match st.relays.get(&Name(at.clone())).map_err(err)? {
            Some(r) if r.parent != st.me => at = r.parent,
            _ => return Ok(false),
        }
    }
    Ok(false)
}

async fn renew(
    st: &HqState,
    via: Option<&NodeName>,
    req: &CertRequest,
) -> Result<CertGrant, String> {
    let auth = authority(st).map_err(|e| e.to_string())?;
    let Some(via) = via else {
        return Err("a renewal comes on a session, not anonymously".into());
    };
    let k = Name(req.name.clone());
    let (cert_pem, not_after) = {
        let _w = st.write.lock().unwrap_or_else(|p| p.into_inner());
        if st.denied.contains(&k).map_err(|e| e.to_string())? {
            return Err(format!("name {} is revoked", req.name));
        }
        if !in_subtree(st, via, &req.name, req.role)? {
            return Err(format!(
                "{} {} is not under relay {via}",
                req.role, req.name
            ));
        }
        let cert_pem = auth
            .ca
            .sign_csr(&req.csr_pem, req.role, &req.name, auth.validity)
            .map_err(|e| e.to_string())?;
        let not_after = not_after_of(&cert_pem);
        let prev = st.issued.get(&k).map_err(|e| e.to_string())?;
        st.issued
            .put(
                &k,
                &IssuedRecord {
                    role: req.role,
                    not_after_ms: not_after,
                    at_ms: now_ms(),
                    renewals: prev.map(|p| p.renewals + 1).unwrap_or(1),
                },
            )
            .map_err(|e| e.to_string())?;
        (cert_pem, not_after)
    };
    st.store.durable().await.map_err(|e| e.to_string())?;
    info!(name = %req.name, role = %req.role, %via, not_after_ms = not_after, "certificate renewed");
    Ok(grant(auth, cert_pem))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_for_expiry_uses_and_role() {
        let rec = |role, expires_ms, uses_left| TokenRecord {
            role,
            expires_ms,
            uses_left,
            created_ms: 0,
        };
        let ok = rec(Role::Agent, 100, 1);
        for (r, role, now, want) in [
            (Some(ok.clone()), Role::Agent, 50, Ok(())),
            (None, Role::Agent, 50, Err("unknown")),
            (Some(ok.clone()), Role::Agent, 100, Err("expired")),
            (
                Some(rec(Role::Agent, 100, 0)),
                Role::Agent,
                50,
                Err("already used"),
            ),
            (
                Some(ok.clone()),
                Role::Relay,
                50,
                Err("for agents, not relays"),
            ),
        ] {
            let got = check_token(r.as_ref(), role, now);
            match want {
                Ok(()) => assert!(got.is_ok(), "{got:?}"),
                Err(w) => assert!(got.as_ref().unwrap_err().contains(w), "{got:?} vs {w}"),
            }
        }
    }
}
