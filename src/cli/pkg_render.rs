//! How package answers are shown: tables by default, JSON with `--json`.
//!
//! [`crate::pkg::ChunkHash`] serializes as 32 raw bytes (right for the wire;
//! serde_json would print an array of 32 numbers), so the JSON of answers
//! holding hashes goes through the view structs here, with each hash as 64
//! lowercase hex characters. Field names follow the response types.

use super::render::{ago, table};
use crate::proto::{
    ClientView, Installed, NodeName, PackageInfo, PackageRef, PackageStatusView, RelaySchedule,
};
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

/// [`PackageInfo`] with the manifest in hex (`package add|list|show --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackageJson {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The manifest's address, 64 hex characters.
    pub manifest: String,
    /// Files.
    pub files: u64,
    /// File bytes in all.
    pub size: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Install command.
    pub install: Option<String>,
    /// Remove command.
    pub remove: Option<String>,
    /// When it was added, unix ms.
    pub added_ms: u64,
    /// Bytes new to the depot (`package add`: the chunks it uploaded).
    pub new_bytes: u64,
    /// Chunks new to the depot (`package add` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_chunks: Option<u64>,
    /// Entries (`package show` only; empty otherwise).
    pub entries: Vec<String>,
}

impl From<&PackageInfo> for PackageJson {
    fn from(p: &PackageInfo) -> PackageJson {
        PackageJson {
            name: p.name.clone(),
            version: p.version.clone(),
            manifest: p.manifest.to_hex(),
            files: p.files,
            size: p.size,
            chunks: p.chunks,
            install: p.install.clone(),
            remove: p.remove.clone(),
            added_ms: p.added_ms,
            new_bytes: p.new_bytes,
            new_chunks: None,
            entries: p.entries.clone(),
        }
    }
}

/// [`PackageRef`] with the manifest in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackageRefJson {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The manifest's address, 64 hex characters.
    pub manifest: String,
}

impl From<&PackageRef> for PackageRefJson {
    fn from(p: &PackageRef) -> PackageRefJson {
        PackageRefJson {
            name: p.name.clone(),
            version: p.version.clone(),
            manifest: p.manifest.to_hex(),
        }
    }
}

/// `package sync --json`: the `SyncOrdered` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncJson {
    /// The sync's id.
    pub id: u64,
    /// The relays.
    pub relays: Vec<NodeName>,
    /// The packages.
    pub packages: Vec<PackageRefJson>,
}

/// [`Installed`] with the manifest in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstalledJson {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// The manifest's address, 64 hex characters.
    pub manifest: String,
    /// When it was installed, unix ms.
    pub at_ms: u64,
}

impl From<&Installed> for InstalledJson {
    fn from(i: &Installed) -> InstalledJson {
        InstalledJson {
            name: i.name.clone(),
            version: i.version.clone(),
            manifest: i.manifest.to_hex(),
            at_ms: i.at_ms,
        }
    }
}

/// `client show --json`: [`ClientView`] with manifests in hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientJson {
    /// The client.
    pub name: NodeName,
    /// Its home relay.
    pub relay: NodeName,
    /// Since when, unix ms.
    pub since_ms: u64,
    /// Installed packages, as last reported.
    pub packages: Vec<InstalledJson>,
    /// When the inventory was reported, unix ms.
    pub inventory_at_ms: Option<u64>,
}

impl From<&ClientView> for ClientJson {
    fn from(c: &ClientView) -> ClientJson {
        ClientJson {
            name: c.name.clone(),
            relay: c.relay.clone(),
            since_ms: c.since_ms,
            packages: c.packages.iter().map(Into::into).collect(),
            inventory_at_ms: c.inventory_at_ms,
        }
    }
}

/// "1.5 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// "2025-01-07T02:00:00Z (in 3h 2m)" or "... (5m ago)".
pub fn when(ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    let stamp = humantime::format_rfc3339_seconds(at);
    let now = crate::proto::now_ms();
    if ms > now {
        let mut secs = (ms - now).div_ceil(1000);
        if secs >= 3600 {
            secs -= secs % 60;
        }
        format!(
            "{stamp} (in {})",
            humantime::format_duration(Duration::from_secs(secs))
        )
    } else {
        format!("{stamp} ({})", ago(ms))
    }
}

fn opt_when(ms: Option<u64>) -> String {
    ms.map(when).unwrap_or_else(|| "never".into())
}

fn stagger(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// What `package add` did (text).
pub fn added(p: &PackageJson) -> String {
    let mut out = format!("added {}@{}\n", p.name, p.version);
    out += &format!("  manifest  {}\n", &p.manifest[..p.manifest.len().min(12)]);
    out += &format!("  files     {}\n", p.files);
    out += &format!("  size      {} ({} bytes)\n", bytes(p.size), p.size);
    out += &format!(
        "  chunks    {} ({} new to the depot, {})\n",
        p.chunks,
        p.new_chunks.unwrap_or(0),
        bytes(p.new_bytes)
    );
    out
}

/// Every package version (text).
pub fn list(ps: &[PackageInfo]) -> String {
    if ps.is_empty() {
        return "no packages (hq package add)\n".into();
    }
    let mut t = table(&["name", "version", "manifest", "files", "size", "added"]);
    for p in ps {
        t.add_row(vec![
            p.name.clone(),
            p.version.clone(),
            p.manifest.short(),
            p.files.to_string(),
            bytes(p.size),
            ago(p.added_ms),
        ]);
    }
    format!("{t}\n")
}

/// One package version with its entries (text).
pub fn show(p: &PackageInfo) -> String {
    let mut out = format!("package {}@{}\n", p.name, p.version);
    out += &format!("  manifest  {}\n", p.manifest);
    out += &format!("  files     {}\n", p.files);
    out += &format!("  size      {} ({} bytes)\n", bytes(p.size), p.size);
    out += &format!("  chunks    {}\n", p.chunks);
    out += &format!("  install   {}\n", p.install.as_deref().unwrap_or("-"));
    out += &format!("  remove    {}\n", p.remove.as_deref().unwrap_or("-"));
    out += &format!("  added     {}\n", when(p.added_ms));
    out += &format!("entries ({}):\n", p.entries.len());
    for e in &p.entries {
        out += &format!("  {e}\n");
    }
    out
}

/// A sync was ordered (text).
pub fn sync(s: &SyncJson) -> String {
    let mut out = format!(
        "sync {} ordered for {}\n",
        s.id,
        s.relays
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for p in &s.packages {
        out += &format!(
            "  {}@{}  {}\n",
            p.name,
            p.version,
            &p.manifest[..p.manifest.len().min(12)]
        );
    }
    out
}

/// A relay's schedule in one line.
pub fn schedule_line(s: &RelaySchedule) -> String {
    match &s.spec {
        None => "none".into(),
        Some(spec) => format!(
            "{spec} UTC, stagger {}, next run {}",
            stagger(s.stagger_ms),
            opt_when(s.next_ms)
        ),
    }
}

/// A schedule was set or cleared (text).
pub fn scheduled(s: &RelaySchedule) -> String {
    match &s.spec {
        None => format!("relay {}: schedule cleared\n", s.relay),
        Some(_) => format!("relay {}: schedule {}\n", s.relay, schedule_line(s)),
    }
}

/// Relay caches (text).
pub fn status(v: &PackageStatusView) -> String {
    if v.relays.is_empty() {
        return "no relays known to hq\n".into();
    }
    let mut out = String::new();
    for r in &v.relays {
        out += &format!("relay {}\n", r.relay);
        out += &format!("  schedule   {}\n", schedule_line(&r.schedule));
        if let Some(last) = r.schedule.last_ms {
            out += &format!("  last scheduled run  {}\n", when(last));
        }
        out += &format!("  last sync  {}\n", opt_when(r.last_sync_ms));
        out += &format!("  fetched    {}\n", bytes(r.fetched_bytes));
        if r.packages.is_empty() {
            out += "  (no packages in the depot)\n";
            continue;
        }
        let mut t = table(&[
            "package", "newest", "present", "state", "reason", "reported",
        ]);
        for p in &r.packages {
            t.add_row(vec![
                p.name.clone(),
                p.newest.clone(),
                p.present.clone().unwrap_or_else(|| "-".into()),
                p.state.clone(),
                p.reason.clone().unwrap_or_default(),
                p.at_ms.map(ago).unwrap_or_else(|| "never".into()),
            ]);
        }
        out += &format!("{t}\n");
    }
    if !v.hq_egress.is_empty() {
        out += &format!(
            "hq sent: {}\n",
            v.hq_egress
                .iter()
                .map(|(r, n)| format!("{r} {}", bytes(*n)))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

/// One client (text).
pub fn client(c: &ClientView) -> String {
    let mut out = format!("client {}\n", c.name);
    out += &format!("  home relay  {}\n", c.relay);
    out += &format!("  since       {}\n", when(c.since_ms));
    out += &format!("  inventory   {}\n", opt_when(c.inventory_at_ms));
    if c.packages.is_empty() {
        out += "no packages installed\n";
        return out;
    }
    let mut t = table(&["package", "version", "manifest", "installed"]);
    for p in &c.packages {
        t.add_row(vec![
            p.name.clone(),
            p.version.clone(),
            p.manifest.short(),
            when(p.at_ms),
        ]);
    }
    out += &format!("{t}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkg::ChunkHash;

    #[test]
    fn hashes_are_hex_in_json() {
        let h = ChunkHash::of(b"m");
        let info = PackageInfo {
            name: "tool".into(),
            version: "1".into(),
            manifest: h,
            files: 2,
            size: 10,
            chunks: 2,
            install: None,
            remove: None,
            added_ms: 5,
            new_bytes: 0,
            entries: vec![],
        };
        let v = serde_json::to_value(PackageJson::from(&info)).unwrap();
        assert_eq!(v["manifest"], h.to_hex());
        assert_eq!(v["manifest"].as_str().map(str::len), Some(64));
        assert!(v.get("new_chunks").is_none());
        let c = ClientView {
            name: NodeName::new("c1").unwrap(),
            relay: NodeName::new("r1").unwrap(),
            since_ms: 1,
            packages: vec![Installed {
                name: "tool".into(),
                version: "1".into(),
                manifest: h,
                at_ms: 2,
            }],
            inventory_at_ms: Some(2),
        };
        let v = serde_json::to_value(ClientJson::from(&c)).unwrap();
        assert_eq!(v["packages"][0]["manifest"], h.to_hex());
        assert_eq!(v["relay"], "r1");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
