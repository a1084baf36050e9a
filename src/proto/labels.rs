//! Labels an agent reports about itself (`agent serve --label KEY=VALUE`),
//! the filter a job's destination is narrowed by (labels that must all
//! match, clients excluded), and a client's presence as its home relay
//! reports it. Plain data and pure checks: no I/O, nothing of ours but ids.

use super::ids::NodeName;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An agent's labels: key -> value.
pub type Labels = BTreeMap<String, String>;

/// Most labels one agent may carry.
pub const MAX_LABELS: usize = 32;

fn label_part_ok(s: &str, max: usize, empty_ok: bool) -> bool {
    (empty_ok || !s.is_empty())
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
}

/// Parses one `KEY=VALUE`: a key of 1-63 characters and a value of at most
/// 63, each of letters, digits, `.`, `_`, `-` and `/`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("label {s:?} has no '=': give KEY=VALUE"));
    };
    if !label_part_ok(k, 63, false) {
        return Err(format!(
            "label key {k:?} must be 1-63 letters, digits, '.', '_', '-' or '/'"
        ));
    }
    if !label_part_ok(v, 63, true) {
        return Err(format!(
            "label value {v:?} (key {k}) must be at most 63 letters, digits, '.', '_', '-' or '/'"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses repeated `KEY=VALUE`s into labels; a key given twice is an error.
pub fn parse_labels<S: AsRef<str>>(items: &[S]) -> Result<Labels, String> {
    let mut out = Labels::new();
    for s in items {
        let (k, v) = parse_label(s.as_ref())?;
        if out.insert(k.clone(), v).is_some() {
            return Err(format!("label key {k} given twice"));
        }
    }
    if out.len() > MAX_LABELS {
        return Err(format!("{} labels, at most {MAX_LABELS}", out.len()));
    }
    Ok(out)
}

/// Labels as `k=v,k2=v2` (display).
pub fn labels_text(l: &Labels) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What narrows a destination: every label must match, and excluded
/// clients are left out. Travels in HQ's signed order, so the relay taking
/// the snapshot applies it and an agent can check it was meant.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetFilter {
    /// Labels a target must carry, each with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Clients left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<NodeName>,
}

impl TargetFilter {
    /// Narrows nothing.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.exclude.is_empty()
    }

    /// Why `client` carrying `labels` is not a target, or `None` when it is.
    pub fn refuses(&self, client: &NodeName, labels: &Labels) -> Option<String> {
        if self.exclude.contains(client) {
            return Some(format!("{client} is excluded"));
        }
        for (k, v) in &self.labels {
            match labels.get(k) {
                Some(have) if have == v => {}
                Some(have) => return Some(format!("{client} has label {k}={have}, not {k}={v}")),
                None => return Some(format!("{client} has no label {k}")),
            }
        }
        None
    }

    /// Whether `client` carrying `labels` is a target.
    pub fn admits(&self, client: &NodeName, labels: &Labels) -> bool {
        self.refuses(client, labels).is_none()
    }
}

/// What an agent says about itself in its `Hello` (identity comes from its
/// certificate, never from here).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct About {
    /// Its labels (`agent serve --label`).
    #[serde(default)]
    pub labels: Labels,
    /// Its software version.
    #[serde(default)]
    pub version: Option<String>,
}

/// A client came online (its session to its home relay is up) or went
/// offline, as its home relay saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The client.
    pub client: NodeName,
    /// Its session is up.
    pub online: bool,
    /// When it changed, unix ms by the home relay's clock.
    pub at_ms: u64,
    /// What it said about itself as it came online (absent when offline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<About>,
}

/// Keeps, of presence changes listed in order, only the latest per client
/// (the others are superseded): positions to keep.
pub fn latest_presence<'a>(all: impl Iterator<Item = &'a Presence>) -> Vec<bool> {
    let all: Vec<&Presence> = all.collect();
    let mut seen = std::collections::HashSet::new();
    let mut keep = vec![false; all.len()];
    for (i, p) in all.iter().enumerate().rev() {
        keep[i] = seen.insert(&p.client);
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn labels_parse_or_say_what_is_wrong() {
        type Want = Result<(&'static str, &'static str), &'static str>;
        let table: [(&str, Want); 8] = [
            ("role=web", Ok(("role", "web"))),
            ("zone=eu-west.1", Ok(("zone", "eu-west.1"))),
            ("empty=", Ok(("empty", ""))),
            ("k8s.io/app=x", Ok(("k8s.io/app", "x"))),
            ("role", Err("no '='")),
            ("=web", Err("label key")),
            ("role=a b", Err("label value")),
            ("ro le=web", Err("label key")),
        ];
        for (input, want) in table {
            match (parse_label(input), want) {
                (Ok((k, v)), Ok((wk, wv))) => assert_eq!((k.as_str(), v.as_str()), (wk, wv)),
                (Err(e), Err(w)) => assert!(e.contains(w), "{input}: {e}"),
                (got, want) => panic!("{input}: got {got:?}, want {want:?}"),
            }
        }
        assert!(parse_labels(&["a=1", "a=2"]).unwrap_err().contains("twice"));
        assert_eq!(parse_labels(&["b=2", "a=1"]).unwrap().len(), 2);
        assert_eq!(
            labels_text(&parse_labels(&["b=2", "a=1"]).unwrap()),
            "a=1,b=2"
        );
    }

    #[test]
    fn a_filter_needs_every_label_and_honours_exclusions() {
        let l = |items: &[&str]| parse_labels(items).unwrap();
        let f = TargetFilter {
            labels: l(&["role=web", "zone=eu"]),
            exclude: vec![n("c3")],
        };
        let table = [
            ("c1", l(&["role=web", "zone=eu", "extra=1"]), true),
            ("c2", l(&["role=web"]), false),
            ("c2", l(&["role=db", "zone=eu"]), false),
            ("c3", l(&["role=web", "zone=eu"]), false),
            ("c4", Labels::new(), false),
        ];
        for (c, labels, want) in table {
            assert_eq!(f.admits(&n(c), &labels), want, "{c} {labels:?}");
        }
        assert!(f
            .refuses(&n("c3"), &Labels::new())
            .unwrap()
            .contains("excluded"));
        assert!(TargetFilter::default().admits(&n("c9"), &Labels::new()));
        assert!(TargetFilter::default().is_empty());
    }

    #[test]
    fn only_the_latest_presence_of_each_client_is_kept() {
        let p = |c: &str, online: bool| Presence {
            client: n(c),
            online,
            at_ms: 0,
            about: None,
        };
        let all = [p("c1", true), p("c2", true), p("c1", false), p("c3", false)];
        assert_eq!(latest_presence(all.iter()), vec![false, true, true, true]);
    }
}
