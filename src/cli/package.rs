//! `hq package ...`, `hq client show` and the package side of
//! `hq job create --install | --remove`.

use super::client::{AdminClient, CliError, Target};
use super::pkg_args::{ClientCmd, PackageCmd, PkgSpec};
use super::pkg_render::{self as render, PackageJson, SyncJson};
use super::{parse_duration, print_json, unexpected};
use crate::pkg::{ChunkHash, ChunkStore, Manifest};
use crate::proto::{
    AdminRequest, AdminResponse, InstallSpec, NodeName, PackageInfo, RemoveSpec, BLOB_PIECE,
};
use std::collections::{HashSet, VecDeque};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

/// Hashes asked about in one `PackageMissing` request, at most.
const MISSING_BATCH: usize = 4096;
/// Upload pieces sent ahead of their answers, at most (HQ takes an admin's
/// requests in order, one at a time).
const UPLOAD_WINDOW: usize = 16;

fn node(flag: &str, s: &str) -> Result<NodeName, CliError> {
    NodeName::new(s).map_err(|e| CliError::Usage(format!("{flag}: {e}")))
}

/// `hq package ...`.
pub(crate) async fn package(cmd: PackageCmd, t: &Target) -> Result<(), CliError> {
    match cmd {
        PackageCmd::Add {
            path,
            name,
            version,
            install,
            remove,
            bundle,
            json,
        } => {
            let p = add(t, path, name, version, install, remove, bundle).await?;
            if json {
                print_json(&p)?;
            } else {
                out!("{}", render::added(&p));
            }
        }
        PackageCmd::List { json } => {
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::PackageList).await? {
                AdminResponse::Packages(ps) if json => print_json(&ps)?,
                AdminResponse::Packages(ps) => out!("{}", render::list(&ps)),
                other => return Err(unexpected(other)),
            }
        }
        PackageCmd::Show { package, json } => {
            let mut c = AdminClient::connect(t).await?;
            let p = show(&mut c, &package).await?;
            if json {
                print_json(&p)?;
            } else {
                out!("{}", render::show(&p));
            }
        }
        PackageCmd::Sync {
            relays,
            package,
            complete,
            json,
        } => {
            let relays = relays
                .iter()
                .map(|r| node("--relay", r))
                .collect::<Result<Vec<_>, _>>()?;
            let (name, version) = match package {
                Some(p) => (Some(p.name), p.version),
                None => (None, None),
            };
            let mut c = AdminClient::connect(t).await?;
            match c
                .request(AdminRequest::PackageSync {
                    relays,
                    name,
                    version,
                    complete,
                })
                .await?
            {
                AdminResponse::SyncOrdered {
                    id,
                    relays,
                    packages,
                } => {
                    let s = SyncJson {
                        id,
                        relays,
                        packages,
                    };
                    if json {
                        print_json(&s)?;
                    } else {
                        out!("{}", render::sync(&s));
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        PackageCmd::Status { relay, json } => {
            let relay = relay.map(|r| node("--relay", &r)).transpose()?;
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::PackageStatus { relay }).await? {
                // No hashes in this view: its own serde is the JSON.
                AdminResponse::PackageStatus(v) if json => print_json(&v)?,
                AdminResponse::PackageStatus(v) => out!("{}", render::status(&v)),
                other => return Err(unexpected(other)),
            }
        }
        PackageCmd::Schedule {
            relay,
            spec,
            stagger,
            clear,
            json,
        } => {
            let relay = node("--relay", &relay)?;
            let spec = if clear {
                None
            } else {
                let text = spec.join(" ");
                text.parse::<crate::pkg::schedule::Schedule>()
                    .map_err(|e| CliError::Usage(format!("bad schedule {text:?}: {e}")))?;
                Some(text)
            };
            let stagger_ms = stagger
                .map(|s| parse_duration("--stagger", &s))
                .transpose()?
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let mut c = AdminClient::connect(t).await?;
            match c
                .request(AdminRequest::PackageSchedule {
                    relay,
                    spec,
                    stagger_ms,
                })
                .await?
            {
                AdminResponse::Scheduled(s) if json => print_json(&s)?,
                AdminResponse::Scheduled(s) => out!("{}", render::scheduled(&s)),
                other => return Err(unexpected(other)),
            }
        }
    }
    Ok(())
}

/// `hq client ...`.
pub(crate) async fn client(cmd: ClientCmd, t: &Target) -> Result<(), CliError> {
    match cmd {
        ClientCmd::Show { name, json } => {
            let name = node("client", &name)?;
            let mut c = AdminClient::connect(t).await?;
            match c.request(AdminRequest::ClientShow { name }).await? {
                AdminResponse::Client(v) if json => print_json(&v)?,
                AdminResponse::Client(v) => out!("{}", render::client(&v)),
                other => return Err(unexpected(other)),
            }
        }
    }
    Ok(())
}

/// One package version from HQ (the newest when no version is given).
async fn show(c: &mut AdminClient, p: &PkgSpec) -> Result<PackageInfo, CliError> {
    match c
        .request(AdminRequest::PackageShow {
            name: p.name.clone(),
            version: p.version.clone(),
        })
        .await?
    {
        AdminResponse::Package(info) => Ok(info),
        other => Err(unexpected(other)),
    }
}

/// The action of `job create --install N[@V]`: the version (newest when not
/// given), manifest and size as HQ's catalog has them.
pub(crate) async fn install_spec(
    c: &mut AdminClient,
    p: &PkgSpec,
    timeout_ms: Option<u64>,
) -> Result<InstallSpec, CliError> {
    let info = show(c, p).await?;
    Ok(InstallSpec {
        name: info.name,
        version: info.version,
        manifest: info.manifest,
        size: info.size,
        timeout_ms,
    })
}

/// The action of `job create --remove N`; the name must be in the catalog.
pub(crate) async fn remove_spec(
    c: &mut AdminClient,
    name: String,
    timeout_ms: Option<u64>,
) -> Result<RemoveSpec, CliError> {
    show(
        c,
        &PkgSpec {
            name: name.clone(),
            version: None,
        },
    )
    .await?;
    Ok(RemoveSpec { name, timeout_ms })
}

fn blocking_err(e: tokio::task::JoinError) -> CliError {
    CliError::Other(format!("chunking task failed: {e}"))
}

/// Chunks `path` into a temporary store: the manifest, its id, the store.
async fn build(
    path: PathBuf,
    name: String,
    version: String,
    install: Option<String>,
    remove: Option<String>,
) -> Result<(Manifest, ChunkHash, Arc<ChunkStore>, tempfile::TempDir), CliError> {
    tokio::task::spawn_blocking(move || {
        let tmp = tempfile::Builder::new()
            .prefix("hq-package-")
            .tempdir()
            .map_err(|e| CliError::Other(format!("cannot create a temporary directory: {e}")))?;
        let failed = |e: crate::pkg::PkgError| {
            CliError::Usage(format!("cannot package {}: {e}", path.display()))
        };
        let store = ChunkStore::open(tmp.path().join("chunks")).map_err(failed)?;
        let (manifest, _) = crate::pkg::add_path(&path, &name, &version, install, remove, &store)
            .map_err(failed)?;
        let id = store.put_manifest(&manifest).map_err(failed)?;
        Ok((manifest, id, Arc::new(store), tmp))
    })
    .await
    .map_err(blocking_err)?
}

/// `hq package add`: chunk locally, upload what the depot lacks, add.
pub(crate) async fn add(
    t: &Target,
    path: PathBuf,
    name: String,
    version: String,
    install: Option<String>,
    remove: Option<String>,
    bundle: bool,
) -> Result<PackageJson, CliError> {
    if std::fs::metadata(&path).is_err() {
        return Err(CliError::Usage(format!(
            "{}: no such file or directory",
            path.display()
        )));
    }
    // Connect first: a wrong --hq or identity fails before the chunking work.
    let mut c = AdminClient::connect(t).await?;
    let (manifest, id, store, _tmp) = build(path, name, version, install, remove).await?;
    let chunks = manifest.chunks();
    let mut wanted: Vec<ChunkHash> = chunks.iter().map(|c| c.hash).collect();
    wanted.push(id);
    let mut missing = HashSet::new();
    for batch in wanted.chunks(MISSING_BATCH) {
        match c
            .request(AdminRequest::PackageMissing {
                hashes: batch.to_vec(),
            })
            .await?
        {
            AdminResponse::Missing { hashes } => missing.extend(hashes),
            other => return Err(unexpected(other)),
        }
    }
    // Chunks first, the manifest last, in the manifest's order.
    let todo: Vec<ChunkHash> = wanted
        .iter()
        .copied()
        .filter(|h| missing.contains(h))
        .collect();
    let new_chunks = chunks.iter().filter(|c| missing.contains(&c.hash)).count() as u64;
    let new_bytes: u64 = chunks
        .iter()
        .filter(|c| missing.contains(&c.hash))
        .map(|c| u64::from(c.len))
        .sum();
    upload_all(&mut c, &store, &todo).await?;
    let info = match c
        .request(AdminRequest::PackageAdd {
            manifest: id,
            bundle,
        })
        .await?
    {
        AdminResponse::Package(info) => info,
        other => return Err(unexpected(other)),
    };
    Ok(PackageJson {
        info: PackageInfo { new_bytes, ..info },
        new_chunks,
    })
}

/// One upload piece in flight.
struct Piece {
    id: u64,
    hash: ChunkHash,
    total: u64,
    last: bool,
}

/// Reads the answer to the oldest piece in flight.
async fn settle(c: &mut AdminClient, p: Piece) -> Result<(), CliError> {
    match c.recv(p.id).await? {
        AdminResponse::Uploaded { complete: false } if p.last => Err(CliError::Other(format!(
            "hq did not take blob {} whole after {} bytes",
            p.hash, p.total
        ))),
        AdminResponse::Uploaded { .. } => Ok(()),
        other => Err(unexpected(other)),
    }
}

/// Uploads `blobs` from `store`, each in pieces of at most [`BLOB_PIECE`]
/// bytes (in order from offset 0), [`UPLOAD_WINDOW`] pieces in flight.
async fn upload_all(
    c: &mut AdminClient,
    store: &Arc<ChunkStore>,
    blobs: &[ChunkHash],
) -> Result<(), CliError> {
    let progress = std::io::stderr().is_terminal() && !blobs.is_empty();
    let mut inflight: VecDeque<Piece> = VecDeque::new();
    let mut done = 0usize;
    for &hash in blobs {
        let s = store.clone();
        let data = tokio::task::spawn_blocking(move || s.get(&hash))
            .await
            .map_err(blocking_err)?
            .map_err(|e| CliError::Other(format!("cannot read blob {hash}: {e}")))?;
        let total = data.len() as u64;
        let mut offset = 0usize;
        loop {
            let end = (offset + BLOB_PIECE).min(data.len());
            if inflight.len() >= UPLOAD_WINDOW {
                if let Some(p) = inflight.pop_front() {
                    done += usize::from(p.last);
                    settle(c, p).await?;
                }
                if progress {
                    eprint!("\ruploading: {done}/{} blobs", blobs.len());
                }
            }
            let id = c
                .send(AdminRequest::PackageUpload {
                    hash,
                    offset: offset as u64,
                    total,
                    data: data[offset..end].to_vec(),
                })
                .await?;
            let last = end >= data.len();
            inflight.push_back(Piece {
                id,
                hash,
                total,
                last,
            });
            offset = end;
            if last {
                break;
            }
        }
    }
    while let Some(p) = inflight.pop_front() {
        settle(c, p).await?;
    }
    if progress {
        eprintln!("\ruploading: {0}/{0} blobs", blobs.len());
    }
    Ok(())
}
