//! `hq token create`, `agent enroll` and `relay enroll`: the command-line
//! side of enrollment. The key is made here and never leaves this process
//! except into OUT/node.key (0600).

use super::args::{EnrollArgs, EnrollRole};
use super::client::{AdminClient, Target};
use super::CliError;
use crate::proto::{AdminRequest, AdminResponse, CertRequest, NodeName, Role};
use crate::tls::enroll::{parse_ca_hash, write_enrolled, EnrollTls, NodeKey};
use crate::tls::PeerIdentity;
use std::time::Duration;

/// `hq token create`.
pub(crate) async fn token_create(
    t: &Target,
    role: EnrollRole,
    ttl: &str,
    uses: u32,
    json: bool,
) -> Result<(), CliError> {
    let ttl = super::parse_duration("--ttl", ttl)?;
    if ttl.is_zero() {
        return Err(CliError::Usage("--ttl must be longer than 0s".into()));
    }
    let role = match role {
        EnrollRole::Agent => Role::Agent,
        EnrollRole::Relay => Role::Relay,
    };
    let mut c = AdminClient::connect(t).await?;
    match c
        .request(AdminRequest::TokenCreate {
            role,
            ttl_ms: ttl.as_millis() as u64,
            uses,
        })
        .await?
    {
        AdminResponse::Token(tk) if json => super::print_json(&tk)?,
        AdminResponse::Token(tk) => {
            outln!("token: {}", tk.token);
            outln!("ca hash: {}", tk.ca_hash);
            outln!(
                "for: {role}, {uses} use{}, expires in {}",
                if uses == 1 { "" } else { "s" },
                humantime::format_duration(Duration::from_secs(ttl.as_secs()))
            );
            let (cmd, flag) = match role {
                Role::Relay => ("relay", "--parent"),
                _ => ("agent", "--relay"),
            };
            outln!(
                "join with: {cmd} enroll {flag} ADDR --token {} --ca-hash {} --name NAME --out DIR",
                tk.token,
                tk.ca_hash
            );
        }
        other => return Err(super::unexpected(other)),
    }
    Ok(())
}

/// `agent enroll` / `relay enroll`: connects to `parent` without a
/// certificate, pins the CA, sends a CSR and writes the identity.
pub(crate) async fn enroll(parent: &str, role: Role, a: EnrollArgs) -> Result<(), CliError> {
    let name =
        NodeName::new(a.name.as_str()).map_err(|e| CliError::Usage(format!("--name: {e}")))?;
    let csr_name = match &a.csr_name {
        Some(n) => {
            NodeName::new(n.as_str()).map_err(|e| CliError::Usage(format!("--csr-name: {e}")))?
        }
        None => name.clone(),
    };
    let pin = parse_ca_hash(&a.ca_hash).map_err(|e| CliError::Usage(e.to_string()))?;
    if crate::tls::Ca::holds_identity(&a.out) {
        return Err(CliError::Usage(format!(
            "{} already holds an identity (node.key or node.crt): enroll into another directory",
            a.out.display()
        )));
    }
    let expect: &[Role] = match role {
        Role::Relay => &[Role::Hq, Role::Relay],
        _ => &[Role::Relay],
    };
    let tls = EnrollTls::new(pin, expect)?;
    let key = NodeKey::generate()?;
    let token = a.token.clone();
    let grant = crate::link::certs::enroll(
        parent,
        &tls,
        |td| {
            Ok(CertRequest {
                name: name.clone(),
                role,
                csr_pem: key.csr(td, role, &csr_name)?,
                token: Some(token),
            })
        },
        Duration::from_secs(60),
    )
    .await
    .map_err(|e| match e {
        crate::link::LinkError::Refused(why) => {
            CliError::Refused(format!("enrollment refused: {why}"))
        }
        crate::link::LinkError::Tls(t) => {
            CliError::Other(format!("cannot enroll at {parent}: {t}"))
        }
        other => CliError::Link {
            addr: parent.to_string(),
            source: other,
        },
    })?;
    let want = PeerIdentity {
        role,
        name: name.clone(),
        trust_domain: tls.trust_domain().unwrap_or_default(),
    };
    write_enrolled(
        &a.out,
        &key,
        &want,
        &pin,
        &grant.cert_pem,
        &grant.ca_pem,
        &grant.sign_pub,
    )?;
    outln!("enrolled {role} {name}: identity in {}", a.out.display());
    Ok(())
}
