//! `hq job status --json` for a job of any size: asks HQ for the leaves a
//! page at a time and writes the document out as pages arrive, so no single
//! frame holds every leaf (1,000,000 leaves would need ~140 MB) and neither
//! side keeps them all. The text is exactly what `serde_json`'s pretty
//! printer makes of the whole status. Holds no state between commands.

use super::client::AdminClient;
use super::CliError;
use crate::proto::{AdminRequest, AdminResponse, ClientStatus, JobStatus, NodeName};

/// Leaves per page (about 3 MB of MessagePack): `RELAYTREE_STATUS_PAGE`
/// overrides it (tests use tiny pages).
const PAGE: u64 = 20_000;

/// The page size to ask for.
pub(crate) fn page_size() -> u64 {
    std::env::var("RELAYTREE_STATUS_PAGE")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(PAGE)
}

/// Asks `req(None)` for the first page, then `req(Some(next))` while HQ
/// says more follow, printing the status document as it goes.
pub(crate) async fn print_paged(
    c: &mut AdminClient,
    req: impl Fn(Option<NodeName>) -> AdminRequest,
) -> Result<(), CliError> {
    let mut page = status(c.request(req(None)).await?)?;
    let mut next = page.next.take();
    let clients = std::mem::take(&mut page.clients);
    let (head, tail) = halves(&page)?;
    let mut doc = Doc::default();
    out!("{head}");
    out!("{}", doc.elements(&clients)?);
    while let Some(after) = next {
        let p = status(c.request(req(Some(after))).await?)?;
        out!("{}", doc.elements(&p.clients)?);
        next = p.next;
    }
    outln!("{}{tail}", doc.close());
    Ok(())
}

fn status(r: AdminResponse) -> Result<JobStatus, CliError> {
    match r {
        AdminResponse::Status(s) => Ok(s),
        other => Err(super::unexpected(other)),
    }
}

fn json_err(e: serde_json::Error) -> CliError {
    CliError::Other(e.to_string())
}

/// The pretty document of `s` (its leaves aside) cut where the leaves go:
/// everything up to and including `"clients": [`, and everything after
/// the list's closing bracket.
fn halves(s: &JobStatus) -> Result<(String, String), CliError> {
    let mut empty = s.clone();
    empty.clients.clear();
    empty.next = None;
    let text = serde_json::to_string_pretty(&empty).map_err(json_err)?;
    // A key at depth 1; a quote inside a string value is always escaped,
    // so this text cannot occur within one.
    let key = "\n  \"clients\": [";
    let at = text
        .find(&format!("{key}]"))
        .ok_or_else(|| CliError::Other("status without a clients list".into()))?;
    let cut = at + key.len();
    Ok((text[..cut].to_string(), text[cut + 1..].to_string()))
}

/// The list's elements as the pretty printer writes them at depth 2.
#[derive(Default)]
struct Doc {
    any: bool,
}

impl Doc {
    fn elements(&mut self, clients: &[ClientStatus]) -> Result<String, CliError> {
        let mut out = String::with_capacity(clients.len() * 200);
        for c in clients {
            out.push_str(if self.any { ",\n    " } else { "\n    " });
            self.any = true;
            let one = serde_json::to_string_pretty(c).map_err(json_err)?;
            out.push_str(&one.replace('\n', "\n    "));
        }
        Ok(out)
    }

    fn close(&self) -> &'static str {
        if self.any {
            "\n  ]"
        } else {
            "]"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Attempt, JobId, LeafState, RelayTotals, Totals};

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    fn job(clients: usize) -> JobStatus {
        let mut totals = Totals::default();
        totals.add(LeafState::Succeeded);
        JobStatus {
            job: JobId(7),
            attempt: Attempt(2),
            done: true,
            state: "done".into(),
            pause_reason: None,
            policy: None,
            totals: totals.clone(),
            relays: vec![RelayTotals {
                relay: n("r1"),
                totals,
            }],
            clients: (0..clients)
                .map(|i| ClientStatus {
                    client: n(&format!("c{i}")),
                    relay: n("r1"),
                    attempt: Attempt(2),
                    state: LeafState::Failed,
                    exit_code: Some(1),
                    reason: Some("said \"clients\": [] and\nleft".into()),
                    output: None,
                    job: None,
                })
                .collect(),
            action: "echo '\"clients\": []'".into(),
            dest: vec![n("r1")],
            awaiting: vec![],
            created_at_ms: 1,
            expires_at_ms: Some(2),
            last_change_ms: 3,
            matched: clients as u64,
            next: None,
            jobs: vec![],
        }
    }

    /// Written in pages of `size`, as `print_paged` does.
    fn paged(s: &JobStatus, size: usize) -> String {
        let (head, tail) = halves(s).unwrap();
        let mut doc = Doc::default();
        let mut out = head;
        for chunk in s.clients.chunks(size.max(1)) {
            out.push_str(&doc.elements(chunk).unwrap());
        }
        out.push_str(doc.close());
        out + &tail
    }

    #[test]
    fn pages_print_exactly_the_whole_document() {
        for (clients, size) in [(0, 1), (1, 1), (3, 1), (3, 2), (5, 5), (5, 100)] {
            let s = job(clients);
            let whole = serde_json::to_string_pretty(&s).unwrap();
            assert_eq!(
                paged(&s, size),
                whole,
                "{clients} leaves in pages of {size}"
            );
            let back: JobStatus = serde_json::from_str(&paged(&s, size)).unwrap();
            assert_eq!(back, s);
        }
    }

    #[test]
    fn the_page_size_has_a_default() {
        assert!(page_size() > 0);
    }
}
