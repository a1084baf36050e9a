//! How package answers are shown: tables by default, JSON with `--json`
//! (the response types themselves; hashes print as 64 hex characters).

use super::render::{ago, table};
use crate::proto::{
    ClientView, NodeName, PackageInfo, PackageRef, PackageStatusView, RelaySchedule,
};
use serde::Serialize;
use std::time::{Duration, UNIX_EPOCH};

/// `package add --json`: the package as HQ recorded it, plus what this add
/// uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PackageJson {
    /// The package.
    #[serde(flatten)]
    pub info: PackageInfo,
    /// Chunks new to the depot.
    pub new_chunks: u64,
}

/// `package sync --json`: the `SyncOrdered` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncJson {
    /// The sync's id.
    pub id: u64,
    /// The relays.
    pub relays: Vec<NodeName>,
    /// The packages.
    pub packages: Vec<PackageRef>,
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
pub fn added(a: &PackageJson) -> String {
    let p = &a.info;
    let mut out = format!("added {}@{}\n", p.name, p.version);
    out += &format!("  manifest  {}\n", p.manifest.short());
    out += &format!("  files     {}\n", p.files);
    out += &format!("  size      {} ({} bytes)\n", bytes(p.size), p.size);
    out += &format!(
        "  chunks    {} ({} new to the depot, {})\n",
        p.chunks,
        a.new_chunks,
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
        out += &format!("  {}@{}  {}\n", p.name, p.version, p.manifest.short());
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
    use crate::proto::Installed;

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
            bundle: false,
        };
        let v = serde_json::to_value(&info).unwrap();
        assert_eq!(v["manifest"], h.to_hex());
        assert_eq!(v["manifest"].as_str().map(str::len), Some(64));
        let added = serde_json::to_value(PackageJson {
            info: info.clone(),
            new_chunks: 2,
        })
        .unwrap();
        assert_eq!(
            (added["name"].clone(), added["new_chunks"].clone()),
            ("tool".into(), 2.into())
        );
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
        let v = serde_json::to_value(&c).unwrap();
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
