//! Syncs and batches on the wire: what a sync leaf is told to change (the
//! packages it installs in order, the collection's package of files, the
//! extras it removes) and what each synced object must read afterwards; a
//! batch job's children; `hq sync`'s request and its `--json` plan.
//!
//! Shared by HQ (which plans and launches), the agent (which applies and
//! audits itself again) and the CLI. Nothing here does I/O.

use super::audit::{ObjectId, ObjectValue};
use super::ids::{JobId, NodeName};
use super::pkg::InstallSpec;
use serde::{Deserialize, Serialize};

/// What one synced object must read once the sync is applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    /// The object.
    pub object: ObjectId,
    /// The master's value; `None`: the object must be gone (`--remove-extra`).
    pub value: Option<ObjectValue>,
}

/// `Action::Sync`: bring this client in line with the master in a few
/// objects, then compare them again. Inside HQ's signed order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncSpec {
    /// The audit this sync acts on.
    pub audit: JobId,
    /// The collection's package: its file entries are the files to write,
    /// each at `/` + its path under the agent's root, with its mode. Staged
    /// and copied, never installed (it does not enter the inventory).
    pub package: InstallSpec,
    /// Packages installed first, in this order.
    #[serde(default)]
    pub installs: Vec<InstallSpec>,
    /// Packages removed (`--remove-extra`).
    #[serde(default)]
    pub removes: Vec<String>,
    /// Files removed, as seen under the root (`--remove-extra`).
    #[serde(default)]
    pub deletes: Vec<String>,
    /// What every synced object must read afterwards: the leaf succeeds only
    /// if all of them do.
    pub expect: Vec<Expect>,
}

/// `Action::Batch`: a job made of other jobs. It never travels down the
/// tree; HQ rolls its children up for status, wait, rerun and cancel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSpec {
    /// The child jobs.
    pub jobs: Vec<JobId>,
    /// What made it, for display (`sync of audit 12`).
    #[serde(default)]
    pub label: String,
}

/// `hq sync`'s options.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The audit.
    pub audit: JobId,
    /// Only these targets (empty: every target).
    #[serde(default)]
    pub clients: Vec<NodeName>,
    /// Only these objects (empty: every differing object).
    #[serde(default)]
    pub objects: Vec<ObjectId>,
    /// Remove what the target has and the master lacks.
    #[serde(default)]
    pub remove_extra: bool,
    /// Install bundles too.
    #[serde(default)]
    pub include_bundles: bool,
    /// `dpkg:NAME` → the depot package `PKG@VER` that provides it.
    #[serde(default)]
    pub matches: Vec<DpkgMatch>,
    /// Plan only; launch nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// `--match dpkg:NAME=PKG@VER`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DpkgMatch {
    /// The Debian package's name.
    pub dpkg: String,
    /// The depot package's name.
    pub package: String,
    /// Its version.
    pub version: String,
}

impl DpkgMatch {
    /// Parses `dpkg:NAME=PKG@VER`.
    pub fn parse(s: &str) -> Result<DpkgMatch, String> {
        let bad = || format!("bad --match {s:?}: expected dpkg:NAME=PKG@VER");
        let rest = s.strip_prefix("dpkg:").ok_or_else(bad)?;
        let (dpkg, pv) = rest.split_once('=').ok_or_else(bad)?;
        let (package, version) = pv.split_once('@').ok_or_else(bad)?;
        if dpkg.is_empty() || package.is_empty() || version.is_empty() {
            return Err(bad());
        }
        Ok(DpkgMatch {
            dpkg: dpkg.into(),
            package: package.into(),
            version: version.into(),
        })
    }
}

/// One deploy job of a sync: one unique collection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncJobView {
    /// The job (`None` on a dry run).
    pub job: Option<JobId>,
    /// The collection's clients.
    pub clients: Vec<NodeName>,
    /// The objects it syncs (`package:tool`, `file:/etc/a.conf`, ...).
    pub objects: Vec<String>,
    /// The collection's package, `NAME@VERSION` (`None` on a dry run).
    pub package: Option<String>,
    /// The packages it installs, in order (`NAME@VERSION`).
    #[serde(default)]
    pub installs: Vec<String>,
}

/// An object left out, and the targets it concerns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedView {
    /// The object.
    pub object: String,
    /// The targets.
    pub clients: Vec<NodeName>,
}

/// `hq sync --json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncView {
    /// The batch job (`None` on a dry run or when nothing needs a change).
    pub batch: Option<JobId>,
    /// One per unique collection.
    pub jobs: Vec<SyncJobView>,
    /// Objects with nothing to install (a dpkg package no depot package
    /// matches, a dpkg extra): reported and skipped, never guessed.
    pub unmatched: Vec<SkippedView>,
    /// Bundles left out (no `--include-bundles`).
    #[serde(default)]
    pub excluded: Vec<SkippedView>,
    /// Only planned.
    #[serde(default)]
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_parse() {
        let m = DpkgMatch::parse("dpkg:hello=hello-pkg@2.10").unwrap();
        assert_eq!(
            (m.dpkg.as_str(), m.package.as_str(), m.version.as_str()),
            ("hello", "hello-pkg", "2.10")
        );
        for s in [
            "hello=x@1",
            "dpkg:hello",
            "dpkg:hello=x",
            "dpkg:=x@1",
            "dpkg:h=@1",
        ] {
            assert!(DpkgMatch::parse(s).is_err(), "{s}");
        }
    }
}
