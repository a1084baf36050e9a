//! The sync plan, a pure decision: from an audit's differences, the master's
//! objects and the depot's catalog, the minimal changes per target, grouped
//! into unique collections (targets needing the same set of changes).
//!
//! The rules (BMC's, kept): an item syncs only when the master has it and
//! the target lacks it or has another version; extras go only with
//! `--remove-extra`; bundles are left out unless `--include-bundles`; a dpkg
//! package installs only through a depot package of the same name and
//! version or one `--match` names, otherwise it is unmatched and skipped,
//! never guessed. No I/O here.

use crate::proto::audit::{DiffKind, Difference, ObjectId};
use crate::proto::NodeName;
use std::collections::{BTreeMap, BTreeSet};

/// One change on a target. Ordered, so that a set of changes is a key and
/// installs come out in a stable order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Change {
    /// Install depot package `name@version`, which provides `object`
    /// (`package:NAME` or `dpkg:NAME`).
    Install {
        /// What it brings in line.
        object: ObjectId,
        /// Depot package name.
        name: String,
        /// Its version.
        version: String,
    },
    /// Write the master's file at `path` (content and mode).
    Write {
        /// As seen under the root.
        path: String,
    },
    /// Remove relaytree package `name` (an extra).
    Remove {
        /// The package.
        name: String,
    },
    /// Delete the file at `path` (an extra).
    Delete {
        /// As seen under the root.
        path: String,
    },
}

impl Change {
    /// The object this change brings in line.
    pub fn object(&self) -> ObjectId {
        match self {
            Change::Install { object, .. } => object.clone(),
            Change::Write { path } | Change::Delete { path } => ObjectId::File(path.clone()),
            Change::Remove { name } => ObjectId::Package(name.clone()),
        }
    }
}

/// What the planner knows of the world.
pub(crate) struct Inputs<'a> {
    /// Each target with its differences (compliant ones may be left out).
    pub targets: Vec<(NodeName, &'a [Difference])>,
    /// The master's versions of packages and dpkg packages.
    pub master_versions: &'a BTreeMap<ObjectId, String>,
    /// The master's files whose content is in the depot.
    pub master_files: &'a BTreeSet<String>,
    /// The depot's catalog: (name, version) → is a bundle.
    pub catalog: &'a BTreeMap<(String, String), bool>,
}

/// The operator's options.
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    /// Only these objects (empty: all).
    pub objects: Vec<ObjectId>,
    /// Remove extras.
    pub remove_extra: bool,
    /// Install bundles too.
    pub include_bundles: bool,
    /// dpkg name → (depot package, version), from `--match`.
    pub matches: BTreeMap<String, (String, String)>,
}

/// Targets needing the same set of changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Collection {
    /// The targets, sorted.
    pub clients: Vec<NodeName>,
    /// The changes, sorted (installs first, in name order).
    pub changes: Vec<Change>,
}

/// The plan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// One per unique collection, ordered by first client.
    pub collections: Vec<Collection>,
    /// Objects with nothing to bring them in line, and their targets.
    pub unmatched: BTreeMap<ObjectId, Vec<NodeName>>,
    /// Bundles left out, and their targets.
    pub excluded: BTreeMap<ObjectId, Vec<NodeName>>,
}

enum Decision {
    Do(Change),
    Unmatched,
    Excluded,
    Skip,
}

fn install(inp: &Inputs, opt: &Options, object: &ObjectId, pkg: (String, String)) -> Decision {
    match inp.catalog.get(&pkg) {
        None => Decision::Unmatched,
        Some(true) if !opt.include_bundles => Decision::Excluded,
        Some(_) => Decision::Do(Change::Install {
            object: object.clone(),
            name: pkg.0,
            version: pkg.1,
        }),
    }
}

fn decide(inp: &Inputs, opt: &Options, d: &Difference) -> Decision {
    let lacks = matches!(d.kind, DiffKind::Missing | DiffKind::Version);
    let extra = d.kind == DiffKind::Extra;
    match &d.object {
        ObjectId::Package(name) if lacks => match inp.master_versions.get(&d.object) {
            Some(v) => install(inp, opt, &d.object, (name.clone(), v.clone())),
            None => Decision::Unmatched,
        },
        ObjectId::Package(name) if extra && opt.remove_extra => {
            Decision::Do(Change::Remove { name: name.clone() })
        }
        ObjectId::Dpkg(name) if lacks => {
            let pkg = match (opt.matches.get(name), inp.master_versions.get(&d.object)) {
                (Some(m), _) => m.clone(),
                (None, Some(v)) => (name.clone(), v.clone()),
                (None, None) => return Decision::Unmatched,
            };
            install(inp, opt, &d.object, pkg)
        }
        // No relaytree way to take a Debian package off: reported, not guessed.
        ObjectId::Dpkg(_) if extra && opt.remove_extra => Decision::Unmatched,
        ObjectId::File(path) if lacks || matches!(d.kind, DiffKind::Content | DiffKind::Mode) => {
            if inp.master_files.contains(path) {
                Decision::Do(Change::Write { path: path.clone() })
            } else {
                Decision::Unmatched
            }
        }
        ObjectId::File(path) if extra && opt.remove_extra => {
            Decision::Do(Change::Delete { path: path.clone() })
        }
        _ => Decision::Skip,
    }
}

fn note(m: &mut BTreeMap<ObjectId, Vec<NodeName>>, o: &ObjectId, c: &NodeName) {
    let v = m.entry(o.clone()).or_default();
    if !v.contains(c) {
        v.push(c.clone());
    }
}

/// Plans a sync. Pure.
pub(crate) fn plan(inp: &Inputs, opt: &Options) -> Plan {
    let mut out = Plan::default();
    let mut groups: BTreeMap<BTreeSet<Change>, Vec<NodeName>> = BTreeMap::new();
    for (client, diffs) in &inp.targets {
        let mut changes = BTreeSet::new();
        for d in diffs.iter() {
            if !opt.objects.is_empty() && !opt.objects.contains(&d.object) {
                continue;
            }
            match decide(inp, opt, d) {
                Decision::Do(c) => {
                    changes.insert(c);
                }
                Decision::Unmatched => note(&mut out.unmatched, &d.object, client),
                Decision::Excluded => note(&mut out.excluded, &d.object, client),
                Decision::Skip => {}
            }
        }
        if !changes.is_empty() {
            groups.entry(changes).or_default().push(client.clone());
        }
    }
    out.collections = groups
        .into_iter()
        .map(|(changes, mut clients)| {
            clients.sort();
            Collection {
                clients,
                changes: changes.into_iter().collect(),
            }
        })
        .collect();
    out.collections
        .sort_by(|a, b| a.clients.first().cmp(&b.clients.first()));
    for v in out.unmatched.values_mut().chain(out.excluded.values_mut()) {
        v.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }
    fn d(object: &str, kind: DiffKind) -> Difference {
        Difference {
            object: ObjectId::parse(object).unwrap(),
            kind,
            master: None,
            target: None,
        }
    }
    fn show(p: &Plan) -> Vec<(Vec<String>, Vec<String>)> {
        p.collections
            .iter()
            .map(|c| {
                (
                    c.clients.iter().map(|c| c.to_string()).collect(),
                    c.changes
                        .iter()
                        .map(|ch| match ch {
                            Change::Install {
                                object,
                                name,
                                version,
                            } => {
                                format!("install {name}@{version} for {object}")
                            }
                            Change::Write { path } => format!("write {path}"),
                            Change::Remove { name } => format!("remove {name}"),
                            Change::Delete { path } => format!("delete {path}"),
                        })
                        .collect(),
                )
            })
            .collect()
    }
    fn keys(m: &BTreeMap<ObjectId, Vec<NodeName>>) -> Vec<(String, Vec<String>)> {
        m.iter()
            .map(|(o, c)| (o.to_string(), c.iter().map(|c| c.to_string()).collect()))
            .collect()
    }

    type Case = (
        &'static str,
        Options,
        Vec<(&'static str, Vec<Difference>)>,
        Vec<(Vec<&'static str>, Vec<&'static str>)>,
        Vec<(&'static str, Vec<&'static str>)>,
        Vec<(&'static str, Vec<&'static str>)>,
    );

    #[test]
    fn plan_table() {
        use DiffKind::*;
        let master_versions: BTreeMap<ObjectId, String> = [
            ("package:tool", "2.0"),
            ("package:sp1", "1"),
            ("package:nodepot", "9"),
            ("dpkg:hello", "2.10"),
            ("dpkg:curl", "7.88"),
            ("dpkg:vim", "9.0"),
        ]
        .into_iter()
        .map(|(o, v)| (ObjectId::parse(o).unwrap(), v.to_string()))
        .collect();
        let master_files: BTreeSet<String> = ["/etc/a.conf", "/etc/b.conf"]
            .into_iter()
            .map(String::from)
            .collect();
        let catalog: BTreeMap<(String, String), bool> = [
            ("tool", "2.0", false),
            ("sp1", "1", true),
            ("hello", "2.10", false),
            ("curl-bin", "7.88-1", false),
        ]
        .into_iter()
        .map(|(n, v, b)| ((n.to_string(), v.to_string()), b))
        .collect();
        let with = |f: fn(&mut Options)| {
            let mut o = Options::default();
            f(&mut o);
            o
        };
        let cases: Vec<Case> = vec![
            (
                "3 targets in 2 collections; a compliant one in none",
                Options::default(),
                vec![
                    ("c1", vec![d("package:tool", Missing), d("file:/etc/a.conf", Content), d("file:/etc/a.conf", Mode)]),
                    ("c2", vec![d("file:/etc/b.conf", Missing)]),
                    ("c3", vec![d("package:tool", Version), d("file:/etc/a.conf", Content)]),
                    ("c4", vec![]),
                ],
                vec![
                    (vec!["c1", "c3"], vec!["install tool@2.0 for package:tool", "write /etc/a.conf"]),
                    (vec!["c2"], vec!["write /etc/b.conf"]),
                ],
                vec![],
                vec![],
            ),
            (
                "extras stay without --remove-extra",
                Options::default(),
                vec![("c1", vec![d("package:old", Extra), d("file:/etc/x", Extra), d("dpkg:vim", Extra)])],
                vec![],
                vec![],
                vec![],
            ),
            (
                "extras go with --remove-extra; a dpkg extra is unmatched",
                with(|o| o.remove_extra = true),
                vec![("c1", vec![d("package:old", Extra), d("file:/etc/x", Extra), d("dpkg:vim", Extra)])],
                vec![(vec!["c1"], vec!["remove old", "delete /etc/x"])],
                vec![("dpkg:vim", vec!["c1"])],
                vec![],
            ),
            (
                "bundles left out",
                Options::default(),
                vec![("c1", vec![d("package:sp1", Missing), d("package:tool", Missing)]), ("c2", vec![d("package:sp1", Missing)])],
                vec![(vec!["c1"], vec!["install tool@2.0 for package:tool"])],
                vec![],
                vec![("package:sp1", vec!["c1", "c2"])],
            ),
            (
                "bundles in with --include-bundles",
                with(|o| o.include_bundles = true),
                vec![("c1", vec![d("package:sp1", Missing)])],
                vec![(vec!["c1"], vec!["install sp1@1 for package:sp1"])],
                vec![],
                vec![],
            ),
            (
                "dpkg: same name and version matches, another is unmatched, a package the depot lacks too",
                Options::default(),
                vec![("c1", vec![d("dpkg:hello", Missing), d("dpkg:curl", Version), d("package:nodepot", Missing)])],
                vec![(vec!["c1"], vec!["install hello@2.10 for dpkg:hello"])],
                vec![("package:nodepot", vec!["c1"]), ("dpkg:curl", vec!["c1"])],
                vec![],
            ),
            (
                "dpkg: --match names the package",
                with(|o| {
                    o.matches.insert("curl".into(), ("curl-bin".into(), "7.88-1".into()));
                }),
                vec![("c1", vec![d("dpkg:curl", Missing)])],
                vec![(vec!["c1"], vec!["install curl-bin@7.88-1 for dpkg:curl"])],
                vec![],
                vec![],
            ),
            (
                "--object narrows",
                with(|o| o.objects = vec![ObjectId::parse("file:/etc/a.conf").unwrap()]),
                vec![("c1", vec![d("package:tool", Missing), d("file:/etc/a.conf", Mode)])],
                vec![(vec!["c1"], vec!["write /etc/a.conf"])],
                vec![],
                vec![],
            ),
            (
                "a file the snapshot holds no content for is unmatched",
                Options::default(),
                vec![("c1", vec![d("file:/etc/zzz", Content)])],
                vec![],
                vec![("file:/etc/zzz", vec!["c1"])],
                vec![],
            ),
        ];
        for (name, opt, targets, want, unmatched, excluded) in cases {
            let targets: Vec<(NodeName, Vec<Difference>)> =
                targets.into_iter().map(|(c, d)| (n(c), d)).collect();
            let inp = Inputs {
                targets: targets
                    .iter()
                    .map(|(c, d)| (c.clone(), d.as_slice()))
                    .collect(),
                master_versions: &master_versions,
                master_files: &master_files,
                catalog: &catalog,
            };
            let p = plan(&inp, &opt);
            let want: Vec<(Vec<String>, Vec<String>)> = want
                .into_iter()
                .map(|(c, ch)| {
                    (
                        c.into_iter().map(String::from).collect(),
                        ch.into_iter().map(String::from).collect(),
                    )
                })
                .collect();
            assert_eq!(show(&p), want, "{name}");
            let kv = |v: Vec<(&str, Vec<&str>)>| -> Vec<(String, Vec<String>)> {
                v.into_iter()
                    .map(|(o, c)| (o.to_string(), c.into_iter().map(String::from).collect()))
                    .collect()
            };
            let mut u = kv(unmatched);
            u.sort_by(|a, b| {
                ObjectId::parse(&a.0)
                    .unwrap()
                    .cmp(&ObjectId::parse(&b.0).unwrap())
            });
            assert_eq!(keys(&p.unmatched), u, "{name}: unmatched");
            assert_eq!(keys(&p.excluded), kv(excluded), "{name}: excluded");
        }
    }
}
