//! Rules for names, entry paths and symlink targets, shared by manifest
//! validation (`manifest`), disk walking (`build`) and writing (`stage`).
//!
//! Pure string checks: it must not touch the disk or know about chunks.

use super::{PkgError, Result};

/// Longest package name or version, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest entry path or symlink target, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single path component, in bytes.
const MAX_COMPONENT_LEN: usize = 255;

pub(crate) fn bad_path(path: &str, why: impl Into<String>) -> PkgError {
    PkgError::BadPath {
        path: path.chars().take(MAX_PATH_LEN).collect(),
        why: why.into(),
    }
}

/// Name and version: non-empty, printable, no '/', '@', '\\' or whitespace,
/// not `.` or `..`, at most [`MAX_NAME_LEN`] bytes.
pub(crate) fn validate_name(what: &str, s: &str) -> Result<()> {
    let bad = |why: &str| PkgError::BadManifest(format!("{what} {s:?}: {why}"));
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.len() > MAX_NAME_LEN {
        return Err(bad(&format!("longer than {MAX_NAME_LEN} bytes")));
    }
    if s == "." || s == ".." {
        return Err(bad("not a name"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '/' | '@' | '\\'))
    {
        return Err(bad(&format!("contains {c:?}")));
    }
    Ok(())
}

/// An entry path: relative, '/'-separated, no empty, `.` or `..` component,
/// no NUL, control character or backslash, bounded lengths.
pub(crate) fn validate_path(p: &str) -> Result<()> {
    if p.is_empty() {
        return Err(bad_path(p, "empty path"));
    }
    if p.len() > MAX_PATH_LEN {
        return Err(bad_path(p, format!("longer than {MAX_PATH_LEN} bytes")));
    }
    if p.contains('\0') {
        return Err(bad_path(p, "contains nul"));
    }
    if p.starts_with('/') {
        return Err(bad_path(p, "absolute path"));
    }
    if p.contains('\\') {
        return Err(bad_path(p, "contains a backslash"));
    }
    if p.chars().any(char::is_control) {
        return Err(bad_path(p, "contains a control character"));
    }
    for c in p.split('/') {
        match c {
            "" => return Err(bad_path(p, "empty component (// or trailing /)")),
            "." => return Err(bad_path(p, "'.' component")),
            ".." => return Err(bad_path(p, "'..' component")),
            c if c.len() > MAX_COMPONENT_LEN => {
                return Err(bad_path(
                    p,
                    format!("component longer than {MAX_COMPONENT_LEN} bytes"),
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The proper ancestors of a valid path, shortest first: "a/b/c" gives "a", "a/b".
pub(crate) fn parents(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/').map(move |(i, _)| &p[..i])
}

/// A symlink target must be relative and, resolved lexically from the link's
/// directory, stay inside the package root. It must also not go through
/// another symlink of the package (`is_symlink` says which paths are), since
/// that would make the lexical answer wrong.
pub(crate) fn check_symlink_target(
    link: &str,
    target: &str,
    is_symlink: impl Fn(&str) -> bool,
) -> Result<()> {
    let bad = |why: String| bad_path(link, format!("symlink target {target:?}: {why}"));
    if target.is_empty() {
        return Err(bad("empty".into()));
    }
    if target.len() > MAX_PATH_LEN {
        return Err(bad(format!("longer than {MAX_PATH_LEN} bytes")));
    }
    if target.contains('\0') {
        return Err(bad("contains nul".into()));
    }
    if target.starts_with('/') {
        return Err(bad("absolute targets are refused".into()));
    }
    if target.contains('\\') {
        return Err(bad("contains a backslash".into()));
    }
    // The link's directory, as components from the root.
    let mut stack: Vec<&str> = link.split('/').collect();
    stack.pop();
    let parts: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in parts.iter().enumerate() {
        match *c {
            "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err(bad("escapes the package root".into()));
                }
            }
            name => {
                stack.push(name);
                if i + 1 < parts.len() && is_symlink(&stack.join("/")) {
                    return Err(bad(format!(
                        "goes through another symlink {:?}",
                        stack.join("/")
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_and_version_rules() {
        for bad in ["", "a/b", "a@b", "a b", "..", ".", "1\n", "a\\b", "\u{7f}"] {
            let e = validate_name("version", bad).unwrap_err();
            assert!(matches!(e, PkgError::BadManifest(_)), "{bad:?}");
            assert!(e.to_string().starts_with("bad manifest: version"), "{e}");
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(validate_name("name", &long)
            .unwrap_err()
            .to_string()
            .contains("128"));
        for ok in [
            "x",
            "1.2.3-rc1+build.5",
            "ünïcode",
            &"x".repeat(MAX_NAME_LEN),
        ] {
            validate_name("name", ok).unwrap();
        }
    }

    #[test]
    fn path_rules() {
        for ok in ["a", "a/b/c", ".hidden", "a/..b", "a/b..", "ü/ß"] {
            validate_path(ok).unwrap();
        }
        let long_component = "x".repeat(256);
        let long_path = "a/".repeat(MAX_PATH_LEN / 2) + "a";
        for bad in [
            "", "/a", "a/", "a//b", ".", "..", "a/./b", "a/../b", "a\\b", "a\0b",
        ] {
            assert!(
                matches!(validate_path(bad), Err(PkgError::BadPath { .. })),
                "{bad:?}"
            );
        }
        assert!(validate_path(&long_component).is_err());
        assert!(validate_path(&long_path).is_err());
    }

    #[test]
    fn symlink_target_rules() {
        let none = |_: &str| false;
        for (link, target) in [
            ("l", "x"),
            ("l", "./x"),
            ("a/l", ".."),
            ("a/b/l", "../../x"),
            ("a/l", "b//c/"),
        ] {
            check_symlink_target(link, target, none).unwrap();
        }
        for (link, target, why) in [
            ("l", "..", "escapes"),
            ("a/l", "../..", "escapes"),
            ("a/l", "b/../../..", "escapes"),
            ("l", "/x", "absolute"),
            ("l", "", "empty"),
            ("l", "a\0", "nul"),
        ] {
            let e = check_symlink_target(link, target, none).unwrap_err();
            assert!(e.to_string().contains(why), "{link} -> {target}: {e}");
            assert!(e.to_string().contains(link), "{e}");
        }
        let e = check_symlink_target("l", "s/x", |p| p == "s").unwrap_err();
        assert!(e.to_string().contains("another symlink"), "{e}");
        // A symlink as the last component is fine (it is checked on its own).
        check_symlink_target("l", "s", |p| p == "s").unwrap();
    }

    #[test]
    fn parents_of_a_path() {
        assert_eq!(parents("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(parents("a").count(), 0);
    }
}
