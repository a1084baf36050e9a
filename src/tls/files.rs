//! File handling for certificates and keys: reading with errors that name the
//! path, writing with explicit modes (keys 0600), refusing keys open to group
//! or others, and PEM decoding.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::TlsError;

/// Mode for certificates.
pub(crate) const PUBLIC_MODE: u32 = 0o644;
/// Mode for private keys.
pub(crate) const PRIVATE_MODE: u32 = 0o600;

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub(crate) fn create_dir(dir: &Path) -> Result<(), TlsError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::Write {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `data` to `path` with exactly `mode`, also when the file existed
/// with another mode (the mode is fixed before any byte is written), and
/// fsyncs it.
pub(crate) fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    write_file_with(path, data, mode, true)
}

/// As [`write_file`], fsyncing the file only if `sync`: a caller writing many
/// files makes them durable together afterwards ([`sync_filesystem`]).
pub(crate) fn write_file_with(
    path: &Path,
    data: &[u8],
    mode: u32,
    sync: bool,
) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.set_permissions(Permissions::from_mode(mode))
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    if sync {
        f.sync_all().map_err(err)?;
    }
    Ok(())
}

/// Makes everything written so far on the filesystem holding `dir` durable,
/// files and directory entries alike (`syncfs`): one call after writing many
/// files instead of an fsync per file and per directory.
pub(crate) fn sync_filesystem(dir: &Path) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    };
    let d = fs::File::open(dir).map_err(err)?;
    nix::unistd::syncfs(&d).map_err(|e| err(std::io::Error::from(e)))
}

/// Reads a file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a private key file, refusing one that group or others may access.
pub(crate) fn read_private(path: &Path) -> Result<Vec<u8>, TlsError> {
    let meta = fs::metadata(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::InsecureKey {
            path: path.to_path_buf(),
            mode,
        });
    }
    read_file(path)
}

/// Decodes every certificate in a PEM file; at least one is required.
pub(crate) fn pem_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad(path, "no PEM certificate found"));
    }
    Ok(certs)
}

/// Decodes the private key of a PEM file.
pub(crate) fn pem_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(path, format!("no usable private key: {e}")))
}

/// A [`TlsError::BadFile`] for `path`.
pub(crate) fn bad(path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
