//! Audits and snapshots on the wire: the objects a client is compared on
//! (`package:NAME`, `file:/PATH`, `dpkg:NAME`), what an audit or a snapshot
//! order asks for, what an agent sends back, and the pure comparison of a
//! master's objects with a target's.
//!
//! These types are shared by HQ (which builds orders and reads results), the
//! agent (which collects its objects and compares) and, later, `hq sync`
//! (which turns differences into changes). Nothing here does I/O.
//!
//! Wire economy: a compliant client answers with no `audit` payload at all
//! (the leaf's `succeeded` says it); a non-compliant one sends only its
//! differences, never its inventory.

use crate::pkg::{ChunkHash, ChunkRef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// What an object is, and its name within that kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectId {
    /// A relaytree package, by name (versions compare as values).
    Package(String),
    /// A regular file, by its absolute path as seen under the agent's root.
    File(String),
    /// A Debian package (`--dpkg`), by name.
    Dpkg(String),
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectId::Package(n) => write!(f, "package:{n}"),
            ObjectId::File(p) => write!(f, "file:{p}"),
            ObjectId::Dpkg(n) => write!(f, "dpkg:{n}"),
        }
    }
}

impl ObjectId {
    /// Parses `package:NAME`, `file:/PATH` or `dpkg:NAME` (as `--object`
    /// and the JSON show them).
    pub fn parse(s: &str) -> Result<ObjectId, String> {
        let bad = || format!("bad object {s:?}: expected package:NAME, file:/PATH or dpkg:NAME");
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() {
            return Err(bad());
        }
        match kind {
            "package" => Ok(ObjectId::Package(name.into())),
            "file" if name.starts_with('/') => Ok(ObjectId::File(name.into())),
            "dpkg" => Ok(ObjectId::Dpkg(name.into())),
            _ => Err(bad()),
        }
    }
}

/// What an object holds: what is compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectValue {
    /// A package's (relaytree or dpkg) version.
    Version(String),
    /// A file's content hash (blake3 of the whole content) and permission bits.
    File {
        /// blake3 of the content.
        hash: ChunkHash,
        /// Permission bits (at most 0o7777).
        mode: u32,
    },
}

/// One object of a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    /// Which object.
    pub id: ObjectId,
    /// Its value.
    pub value: ObjectValue,
}

/// How a target differs from the master in one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffKind {
    /// The master has it, the target does not.
    Missing,
    /// The target has it, the master does not.
    Extra,
    /// A package at another version.
    Version,
    /// A file with other content.
    Content,
    /// A file with other permission bits.
    Mode,
}

impl DiffKind {
    /// Lowercase name as in the JSON contract.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Version => "version",
            DiffKind::Content => "content",
            DiffKind::Mode => "mode",
        }
    }
}

/// One difference, with the master's and the target's values as text
/// (`None` where that side lacks the object).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// The object.
    pub object: ObjectId,
    /// How it differs.
    pub kind: DiffKind,
    /// The master's value.
    #[serde(default)]
    pub master: Option<String>,
    /// The target's value.
    #[serde(default)]
    pub target: Option<String>,
}

/// Which objects a collection takes in (the same for master and targets, so
/// that both sides are read alike).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Selection {
    /// File globs (absolute, as seen under the agent's root; `*` and `?`
    /// within one path part, `**` across parts).
    #[serde(default)]
    pub files: Vec<String>,
    /// Compare relaytree packages.
    #[serde(default)]
    pub packages: bool,
    /// Compare Debian packages (`dpkg-query` under the agent's root).
    #[serde(default)]
    pub dpkg: bool,
}

/// `Action::Audit`: compare yourself with these objects. Inside HQ's signed
/// order, so no relay can alter what a client is compared with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditSpec {
    /// `CLIENT` or `snapshot:NAME`, for display.
    pub master: String,
    /// The snapshot the objects come from.
    pub snapshot: String,
    /// What to collect on the target.
    pub select: Selection,
    /// The master's objects (empty on the wire when `objects_ref` names
    /// them; the agent fills them in before it compares).
    pub objects: Vec<Object>,
    /// The master's objects by reference: the hash of their list, a blob in
    /// HQ's depot that travels once per relay hop and is fetched once per
    /// agent process like a package's blobs. Inside the signed order, so
    /// every byte an agent compares with is checked against HQ's word.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects_ref: Option<ObjectsRef>,
}

/// Where an audit's object list is: a blob (the named MessagePack of a
/// `Vec<Object>`) addressed by its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectsRef {
    /// blake3 of the encoded list: its address.
    pub hash: ChunkHash,
    /// Its encoded length.
    pub bytes: u64,
    /// How many objects it holds.
    pub count: u64,
}

/// The largest object list an audit may reference (far above what a
/// snapshot can report, [`MAX_AUDIT_BYTES`]).
pub const MAX_OBJECT_LIST_BYTES: u64 = 16 * 1024 * 1024;

/// Why an object list cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ObjectsError {
    /// The blob is not the one HQ signed.
    #[error("refused: the object list does not match the hash hq signed (expected {}, got {})", .expected.short(), .got.short())]
    Mismatch {
        /// HQ's hash.
        expected: ChunkHash,
        /// The hash of what arrived.
        got: ChunkHash,
    },
    /// Larger than [`MAX_OBJECT_LIST_BYTES`].
    #[error(
        "the object list takes {0} bytes, over the {MAX_OBJECT_LIST_BYTES} an audit may reference"
    )]
    TooBig(u64),
    /// The list cannot be encoded.
    #[error("cannot encode the object list: {0}")]
    Encode(String),
    /// It does not decode, or holds another count than signed.
    #[error("the object list {}: {why}", .hash.short())]
    Bad {
        /// Its address.
        hash: ChunkHash,
        /// What is wrong.
        why: String,
    },
}

impl AuditSpec {
    /// This spec with its objects moved out into a blob: the spec to sign
    /// (carrying only [`ObjectsRef`]) and the blob's bytes to put where the
    /// tree fetches blobs. Pure.
    pub fn by_reference(mut self) -> Result<(AuditSpec, Vec<u8>), ObjectsError> {
        let blob = rmp_serde::to_vec_named(&self.objects)
            .map_err(|e| ObjectsError::Encode(e.to_string()))?;
        if blob.len() as u64 > MAX_OBJECT_LIST_BYTES {
            return Err(ObjectsError::TooBig(blob.len() as u64));
        }
        self.objects_ref = Some(ObjectsRef {
            hash: ChunkHash::of(&blob),
            bytes: blob.len() as u64,
            count: self.objects.len() as u64,
        });
        self.objects = Vec::new();
        Ok((self, blob))
    }
}

/// The objects of the list `r` names, from its blob: refused unless the
/// blob hashes to `r.hash` and holds `r.count` objects. Pure.
pub fn decode_objects(r: &ObjectsRef, blob: &[u8]) -> Result<Vec<Object>, ObjectsError> {
    let got = ChunkHash::of(blob);
    if got != r.hash {
        return Err(ObjectsError::Mismatch {
            expected: r.hash,
            got,
        });
    }
    let bad = |why: String| ObjectsError::Bad { hash: r.hash, why };
    let objects: Vec<Object> =
        rmp_serde::from_slice(blob).map_err(|e| bad(format!("does not decode: {e}")))?;
    if objects.len() as u64 != r.count {
        return Err(bad(format!(
            "holds {} objects, the order says {}",
            objects.len(),
            r.count
        )));
    }
    Ok(objects)
}

/// `Action::Snapshot`: collect your objects and upload your files' content
/// to HQ's depot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// The snapshot's name.
    pub name: String,
    /// What to collect.
    pub select: Selection,
}

/// A file of a snapshot: how to rebuild it from the depot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Absolute path as seen under the master's root.
    pub path: String,
    /// Length in bytes.
    pub size: u64,
    /// Its chunks, in order (every one is in HQ's depot once the snapshot
    /// succeeded).
    pub chunks: Vec<ChunkRef>,
}

/// What a master's agent reports when its snapshot is uploaded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotUpload {
    /// The snapshot's name.
    pub name: String,
    /// Every object collected.
    pub objects: Vec<Object>,
    /// The content of each file object.
    pub files: Vec<SnapshotFile>,
}

/// What an audit or snapshot leaf carries up with its final state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// A non-compliant target's differences (a compliant one sends nothing).
    Differences(Vec<Difference>),
    /// A master's snapshot.
    Snapshot(SnapshotUpload),
    /// A sync leaf applied its changes and audited them again with no
    /// difference left (HQ then clears them from the audit's leaf).
    Synced,
}

/// The most an audit order's spec or a leaf's [`AuditOutcome`] may take,
/// encoded: both travel in frames an agent reads or writes (1 MiB at most),
/// with room for the rest of the message.
pub const MAX_AUDIT_BYTES: usize = 768 * 1024;

/// The most an audit order's spec may take, encoded, when its objects
/// travel inline: it travels twice in an assignment (the action, and inside
/// the signed order), which HQ keeps under half an agent's frame. `hq audit
/// create` sends them by reference ([`ObjectsRef`]) instead.
pub const MAX_ORDER_BYTES: usize = 240 * 1024;

/// The encoded size of `v` as it travels (named MessagePack).
pub fn encoded_len<T: Serialize>(v: &T) -> usize {
    rmp_serde::to_vec_named(v)
        .map(|b| b.len())
        .unwrap_or(usize::MAX)
}

/// The text shown for a value.
pub fn show(v: &ObjectValue) -> String {
    match v {
        ObjectValue::Version(s) => s.clone(),
        ObjectValue::File { hash, mode } => {
            format!("blake3:{} {}", hash.to_hex(), show_mode(*mode))
        }
    }
}

/// Permission bits as `0644`.
pub fn show_mode(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Compares a target's objects with the master's: one difference per object
/// missing, extra or at another version; a file may differ in both content
/// and mode (two differences). Sorted by object, then kind. Pure.
pub fn compare(master: &[Object], target: &[Object]) -> Vec<Difference> {
    let m: BTreeMap<&ObjectId, &ObjectValue> = master.iter().map(|o| (&o.id, &o.value)).collect();
    let t: BTreeMap<&ObjectId, &ObjectValue> = target.iter().map(|o| (&o.id, &o.value)).collect();
    let mut out = Vec::new();
    let d = |object: &ObjectId, kind, master: Option<String>, target: Option<String>| Difference {
        object: object.clone(),
        kind,
        master,
        target,
    };
    for (id, mv) in &m {
        match t.get(id) {
            None => out.push(d(id, DiffKind::Missing, Some(show(mv)), None)),
            Some(tv) => match (mv, tv) {
                (ObjectValue::Version(a), ObjectValue::Version(b)) => {
                    if a != b {
                        out.push(d(id, DiffKind::Version, Some(a.clone()), Some(b.clone())));
                    }
                }
                (
                    ObjectValue::File { hash: ha, mode: ma },
                    ObjectValue::File { hash: hb, mode: mb },
                ) => {
                    if ha != hb {
                        out.push(d(
                            id,
                            DiffKind::Content,
                            Some(format!("blake3:{}", ha.to_hex())),
                            Some(format!("blake3:{}", hb.to_hex())),
                        ));
                    }
                    if ma != mb {
                        out.push(d(
                            id,
                            DiffKind::Mode,
                            Some(show_mode(*ma)),
                            Some(show_mode(*mb)),
                        ));
                    }
                }
                // The same name with another kind of value: treat as content.
                (a, b) => out.push(d(id, DiffKind::Content, Some(show(a)), Some(show(b)))),
            },
        }
    }
    for (id, tv) in &t {
        if !m.contains_key(id) {
            out.push(d(id, DiffKind::Extra, None, Some(show(tv))));
        }
    }
    out.sort_by(|a, b| (&a.object, a.kind).cmp(&(&b.object, b.kind)));
    out
}

/// Whether `path` matches `glob`: `*` and `?` match within one `/`-separated
/// part, `**` matches any number of whole parts. Pure.
pub fn glob_match(glob: &str, path: &str) -> bool {
    let g: Vec<&str> = glob.split('/').filter(|s| !s.is_empty()).collect();
    let p: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match_parts(&g, &p)
}

fn match_parts(g: &[&str], p: &[&str]) -> bool {
    match g.split_first() {
        None => p.is_empty(),
        Some((&"**", rest)) => (0..=p.len()).any(|i| match_parts(rest, &p[i..])),
        Some((first, rest)) => match p.split_first() {
            Some((pf, prest)) => {
                match_part(first.as_bytes(), pf.as_bytes()) && match_parts(rest, prest)
            }
            None => false,
        },
    }
}

fn match_part(g: &[u8], s: &[u8]) -> bool {
    match g.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|i| match_part(rest, &s[i..])),
        Some((b'?', rest)) => !s.is_empty() && match_part(rest, &s[1..]),
        Some((c, rest)) => s.first() == Some(c) && match_part(rest, &s[1..]),
    }
}

/// The leading parts of a glob that hold no wildcard: where to start looking.
pub fn glob_base(glob: &str) -> String {
    let mut base = String::new();
    for part in glob.split('/').filter(|s| !s.is_empty()) {
        if part.contains(['*', '?']) {
            break;
        }
        base.push('/');
        base.push_str(part);
    }
    if base.is_empty() {
        base.push('/');
    }
    base
}

/// Checks an operator's file glob: absolute, no `.` or `..` parts.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if !glob.starts_with('/') {
        return Err(format!("file glob {glob:?} must be an absolute path"));
    }
    if glob.split('/').any(|p| p == ".." || p == ".") {
        return Err(format!("file glob {glob:?} must not hold . or .. parts"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(n: &str, v: &str) -> Object {
        Object {
            id: ObjectId::Package(n.into()),
            value: ObjectValue::Version(v.into()),
        }
    }
    fn dpkg(n: &str, v: &str) -> Object {
        Object {
            id: ObjectId::Dpkg(n.into()),
            value: ObjectValue::Version(v.into()),
        }
    }
    fn file(p: &str, content: &str, mode: u32) -> Object {
        Object {
            id: ObjectId::File(p.into()),
            value: ObjectValue::File {
                hash: ChunkHash::of(content.as_bytes()),
                mode,
            },
        }
    }
    fn kinds(d: &[Difference]) -> Vec<(String, &'static str)> {
        d.iter()
            .map(|d| (d.object.to_string(), d.kind.as_str()))
            .collect()
    }

    #[test]
    fn compare_table() {
        // A package, a file and a dpkg package at these values.
        let three = |tool: &str, content: &str, mode: u32, hello: &str| {
            vec![
                pkg("tool", tool),
                file("/etc/a", content, mode),
                dpkg("hello", hello),
            ]
        };
        let base = three("1.0", "x", 0o644, "2.10");
        type Case = (&'static str, Vec<Object>, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            ("same", base.clone(), vec![]),
            (
                "missing package",
                vec![file("/etc/a", "x", 0o644), dpkg("hello", "2.10")],
                vec![("package:tool", "missing")],
            ),
            (
                "extra package",
                [base.clone(), vec![pkg("more", "1")]].concat(),
                vec![("package:more", "extra")],
            ),
            (
                "version",
                three("2.0", "x", 0o644, "2.10"),
                vec![("package:tool", "version")],
            ),
            (
                "dpkg version",
                three("1.0", "x", 0o644, "2.9"),
                vec![("dpkg:hello", "version")],
            ),
            (
                "content",
                three("1.0", "y", 0o644, "2.10"),
                vec![("file:/etc/a", "content")],
            ),
            (
                "mode",
                three("1.0", "x", 0o600, "2.10"),
                vec![("file:/etc/a", "mode")],
            ),
            (
                "content and mode",
                three("1.0", "y", 0o600, "2.10"),
                vec![("file:/etc/a", "content"), ("file:/etc/a", "mode")],
            ),
            (
                "missing file, extra file",
                vec![
                    pkg("tool", "1.0"),
                    file("/etc/b", "x", 0o644),
                    dpkg("hello", "2.10"),
                ],
                vec![("file:/etc/a", "missing"), ("file:/etc/b", "extra")],
            ),
            (
                "empty target",
                vec![],
                vec![
                    ("package:tool", "missing"),
                    ("file:/etc/a", "missing"),
                    ("dpkg:hello", "missing"),
                ],
            ),
        ];
        for (name, target, want) in cases {
            let got = compare(&base, &target);
            let want: Vec<(String, &str)> =
                want.into_iter().map(|(o, k)| (o.to_string(), k)).collect();
            assert_eq!(kinds(&got), want, "{name}");
        }
    }

    #[test]
    fn differences_carry_both_values() {
        let d = compare(&[pkg("tool", "1.0")], &[pkg("tool", "2.0")]);
        assert_eq!(d[0].master.as_deref(), Some("1.0"));
        assert_eq!(d[0].target.as_deref(), Some("2.0"));
        let d = compare(&[file("/a", "x", 0o644)], &[file("/a", "x", 0o600)]);
        assert_eq!(d[0].master.as_deref(), Some("0644"));
        assert_eq!(d[0].target.as_deref(), Some("0600"));
        let d = compare(&[pkg("tool", "1.0")], &[]);
        assert_eq!(
            (d[0].master.as_deref(), d[0].target.as_deref()),
            (Some("1.0"), None)
        );
        let d = compare(&[], &[pkg("tool", "1.0")]);
        assert_eq!(
            (d[0].master.as_deref(), d[0].target.as_deref()),
            (None, Some("1.0"))
        );
    }

    #[test]
    fn globs() {
        for (g, p, want) in [
            ("/etc/app/*.conf", "/etc/app/a.conf", true),
            ("/etc/app/*.conf", "/etc/app/sub/a.conf", false),
            ("/etc/app/*.conf", "/etc/app/a.confx", false),
            ("/etc/**/*.conf", "/etc/a/b/c.conf", true),
            ("/etc/**/*.conf", "/etc/c.conf", true),
            ("/etc/?.conf", "/etc/a.conf", true),
            ("/etc/?.conf", "/etc/ab.conf", false),
            ("/etc/app.conf", "/etc/app.conf", true),
            ("/etc/**", "/etc/x/y", true),
        ] {
            assert_eq!(glob_match(g, p), want, "{g} ~ {p}");
        }
        assert_eq!(glob_base("/etc/app/*.conf"), "/etc/app");
        assert_eq!(glob_base("/*"), "/");
        assert_eq!(glob_base("/etc/app.conf"), "/etc/app.conf");
        assert!(check_glob("etc/x").is_err());
        assert!(check_glob("/etc/../x").is_err());
        assert!(check_glob("/etc/*.conf").is_ok());
    }

    /// The bytes a target sends up for an audit leaf: one `Events` frame
    /// (length prefix included) holding its one final update. Goal for a
    /// compliant client: under 200.
    #[test]
    fn a_compliant_client_sends_few_bytes_up() {
        use crate::proto::{Attempt, Event, JobId, LeafState, LeafUpdate, Msg, NodeName};
        let frame = |audit: Option<AuditOutcome>| {
            let u = LeafUpdate {
                job: JobId(123_456),
                attempt: Attempt(1),
                client: NodeName::new("agent-00001").unwrap(),
                relay: NodeName::new("relay-01").unwrap(),
                state: LeafState::Succeeded,
                exit_code: None,
                reason: None,
                output: None,
                at_ms: 1_796_000_000_000,
                audit,
                out: None,
            };
            crate::proto::codec::encode(&Msg::Events(vec![(42, Event::Leaf(u))]))
                .unwrap()
                .len()
                + 4
        };
        let compliant = frame(None);
        let one = frame(Some(AuditOutcome::Differences(compare(
            &[pkg("tool", "1.0")],
            &[pkg("tool", "2.0")],
        ))));
        println!("audit bytes up: compliant {compliant}, one difference {one}");
        // Down: the order for a master of 50 packages and 200 files, once
        // per relay hop (the assignment carries the action, its signed
        // order carries it again).
        let mut objects: Vec<Object> = (0..50)
            .map(|i| pkg(&format!("pkg{i:02}"), "1.0-1"))
            .collect();
        objects.extend((0..200).map(|i| file(&format!("/etc/app/f{i:03}.conf"), "x", 0o644)));
        let spec = AuditSpec {
            master: "snapshot:base".into(),
            snapshot: "base".into(),
            select: Selection::default(),
            objects,
            objects_ref: None,
        };
        let inline = encoded_len(&spec);
        let (by_ref, blob) = spec.clone().by_reference().unwrap();
        let n = encoded_len(&by_ref);
        println!(
            "audit order: {n} bytes by reference (inline: {inline}); the list: {} bytes once per relay hop",
            blob.len()
        );
        assert!(n < 300, "{n} bytes by reference");
        assert!(inline < MAX_ORDER_BYTES);
        assert!(decode_objects(&by_ref.objects_ref.unwrap(), &blob).unwrap() == spec.objects);
        assert!(compliant < 200, "{compliant} bytes");
        assert!(one > compliant);
    }

    #[test]
    fn an_object_list_by_reference_is_checked_against_the_signed_hash() {
        let spec = AuditSpec {
            master: "c4".into(),
            snapshot: "base".into(),
            select: Selection::default(),
            objects: vec![pkg("tool", "1.0"), file("/etc/a", "x", 0o644)],
            objects_ref: None,
        };
        let (by_ref, blob) = spec.clone().by_reference().unwrap();
        assert!(by_ref.objects.is_empty());
        let r = by_ref.objects_ref.unwrap();
        assert_eq!(
            (r.hash, r.bytes, r.count),
            (ChunkHash::of(&blob), blob.len() as u64, 2)
        );
        // The same list, the same address: one blob for every audit of it.
        assert_eq!(spec.clone().by_reference().unwrap().0, by_ref);
        let other = rmp_serde::to_vec_named(&vec![pkg("tool", "6.6")]).unwrap();
        let short = rmp_serde::to_vec_named(&vec![pkg("tool", "1.0")]).unwrap();
        let lying = ObjectsRef {
            hash: ChunkHash::of(&short),
            ..r
        };
        type Case<'a> = (&'a str, ObjectsRef, &'a [u8], Result<(), &'a str>);
        let cases: Vec<Case> = vec![
            ("the signed list", r, &blob, Ok(())),
            (
                "another list",
                r,
                &other,
                Err("does not match the hash hq signed"),
            ),
            ("garbage", r, b"\xc1\xc1", Err("does not match")),
            (
                "another count than signed",
                lying,
                &short,
                Err("holds 1 objects, the order says 2"),
            ),
        ];
        for (what, r, b, want) in cases {
            match (decode_objects(&r, b), want) {
                (Ok(got), Ok(())) => assert!(got == spec.objects, "{what}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{what}: {e}"),
                (got, want) => panic!("{what}: {:?}, wanted {want:?}", got.map(|g| g.len())),
            }
        }
    }

    #[test]
    fn object_ids_parse_and_show() {
        for s in ["package:tool", "file:/etc/a.conf", "dpkg:hello"] {
            assert_eq!(ObjectId::parse(s).unwrap().to_string(), s);
        }
        for s in ["tool", "file:etc", "pkg:x", "package:"] {
            assert!(ObjectId::parse(s).is_err(), "{s}");
        }
    }
}
