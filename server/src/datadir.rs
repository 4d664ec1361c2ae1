//! Checks a data directory before sled touches it, so that each way it can be unusable
//! gets its own message and the one remedy that applies.
//!
//! A directory is recognised as Rollcall's by what the server writes there: the
//! durability marker `durable-tip`, or sled's `conf` and `db` together (directories
//! written before the marker existed), or nothing but names sled and the server write
//! (a first start that stopped half way). A missing directory is created if its parent
//! exists; an empty one (a `lost+found` aside) is used as is; anything else is another
//! program's, and is neither written to nor moved aside.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::error::{DataDirProblem, Error};

/// Names Rollcall (through sled) writes in its data directory.
const MARKER: &str = "durable-tip";
const SLED_CONF: &str = "conf";
const SLED_DB: &str = "db";
const SLED_BLOBS: &str = "blobs";
/// Probe file written (and removed) to check the directory is writable.
const PROBE: &str = ".rollcall-write-check";
/// What a file system may put in an empty directory (the root of a mount), and a probe
/// left by a start that crashed.
const IGNORED: &[&str] = &["lost+found", PROBE];

/// Whether `name` is one sled or the server writes: a directory holding only such
/// names is Rollcall's even without `conf` and `db` (a first start that crashed).
fn is_ours(name: &str) -> bool {
    matches!(name, MARKER | SLED_CONF | SLED_DB | SLED_BLOBS)
        || name == format!("{MARKER}.new")
        || name.starts_with("snap.")
}

/// What was found at the data directory's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// It did not exist and has been created.
    Created,
    /// An empty directory.
    Empty,
    /// A Rollcall data directory.
    Rollcall,
}

/// Looks at `path` and, where it is missing but its parent exists, creates it. Fails
/// with a [`Error::DataDirectory`] naming the cause and remedy; never writes into a
/// directory it does not recognise.
pub(crate) fn prepare(path: &Path) -> Result<Found, Error> {
    let found = match fs::metadata(path) {
        Ok(meta) if !meta.is_dir() => {
            return Err(problem(
                path,
                DataDirProblem::NotADirectory,
                "it is a file, not a directory: point --data at a directory (a missing one \
                 is created)"
                    .to_owned(),
            ));
        }
        Ok(_) => classify(path)?,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            let parent = match path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !parent.exists() {
                return Err(problem(
                    path,
                    DataDirProblem::Missing,
                    format!(
                        "neither it nor its parent {} exists: create it (mkdir -p {}) or \
                         correct --data",
                        parent.display(),
                        path.display()
                    ),
                ));
            }
            fs::create_dir(path).map_err(|e| io_problem(path, &parent, "cannot create it", &e))?;
            tracing::info!(data = %path.display(), "created the data directory");
            Found::Created
        }
        Err(error) => return Err(io_problem(path, path, "cannot look at it", &error)),
    };
    check_writable(path)?;
    Ok(found)
}

/// Empty, Rollcall's, or another program's (an error).
fn classify(path: &Path) -> Result<Found, Error> {
    let entries = fs::read_dir(path).map_err(|e| io_problem(path, path, "cannot list it", &e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_problem(path, path, "cannot list it", &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !IGNORED.contains(&name.as_str()) {
            names.push(name);
        }
    }
    if names.is_empty() {
        return Ok(Found::Empty);
    }
    let has = |wanted: &str| names.iter().any(|name| name == wanted);
    if has(MARKER) || (has(SLED_CONF) && has(SLED_DB)) || names.iter().all(|n| is_ours(n)) {
        return Ok(Found::Rollcall);
    }
    names.sort();
    let shown = names
        .iter()
        .take(3)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let more = match names.len() {
        0..=3 => String::new(),
        n => format!(" and {} more", n - 3),
    };
    Err(problem(
        path,
        DataDirProblem::Foreign,
        format!(
            "it is not empty and holds no Rollcall data (it holds {shown}{more}), so it may \
             belong to another program and nothing in it was changed: point --data at a new \
             or empty directory"
        ),
    ))
}

/// The directory takes new files, and the files sled keeps open read-write can be.
fn check_writable(path: &Path) -> Result<(), Error> {
    let probe = path.join(PROBE);
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .map_err(|e| io_problem(path, path, "cannot create files in it", &e))?;
    let _ = fs::remove_file(&probe);
    for name in [SLED_CONF, SLED_DB, MARKER] {
        let file = path.join(name);
        match fs::OpenOptions::new().read(true).write(true).open(&file) {
            Ok(_) => {}
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => {
                return Err(io_problem(
                    path,
                    &file,
                    &format!("cannot open {} for reading and writing", file.display()),
                    &error,
                ));
            }
        }
    }
    let blobs = path.join(SLED_BLOBS);
    if blobs.is_dir() {
        fs::read_dir(&blobs).map_err(|e| {
            io_problem(
                path,
                &blobs,
                &format!("cannot list {}", blobs.display()),
                &e,
            )
        })?;
    }
    Ok(())
}

fn problem(path: &Path, kind: DataDirProblem, reason: String) -> Error {
    Error::DataDirectory {
        path: path.to_path_buf(),
        kind,
        reason,
    }
}

/// An I/O error on `target` (the data directory, its parent or a file in it) while
/// doing `what`: permission problems and read-only file systems get their remedy.
fn io_problem(path: &Path, target: &Path, what: &str, error: &io::Error) -> Error {
    if error.kind() == ErrorKind::PermissionDenied {
        return permission_denied(path, target, what);
    }
    if error.kind() == ErrorKind::ReadOnlyFilesystem {
        return problem(
            path,
            DataDirProblem::ReadOnly,
            "it is on a read-only file system: mount it read-write or choose another --data"
                .to_owned(),
        );
    }
    problem(path, DataDirProblem::Io, format!("{what}: {error}"))
}

/// Permission denied on `target`: who the server runs as, who owns it, and the fix.
pub(crate) fn permission_denied(path: &Path, target: &Path, what: &str) -> Error {
    let user = fs::metadata("/proc/self").ok().map(|meta| meta.uid());
    let runs_as = user.map_or_else(|| "this user".to_owned(), user_name);
    let owner = fs::metadata(target).ok().map_or_else(String::new, |meta| {
        format!(
            " belongs to {} with mode {:04o}",
            user_name(meta.uid()),
            meta.permissions().mode() & 0o7777
        )
    });
    let login = user
        .and_then(login_name)
        .unwrap_or_else(|| "$USER".to_owned());
    problem(
        path,
        DataDirProblem::Permission,
        format!(
            "permission denied ({what}): the server runs as {runs_as} and {target}{owner}; give \
             {login} read and write access to it (e.g. chown -R {login} {target}) or choose \
             another --data",
            target = target.display()
        ),
    )
}

/// `name (uid N)`, or `uid N` for a uid without a name.
fn user_name(uid: u32) -> String {
    match login_name(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// The login name of `uid`, from `/etc/passwd`.
fn login_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let found: u32 = fields.nth(1)?.parse().ok()?;
        (found == uid).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holding(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in names {
            if let Some(sub) = name.strip_suffix('/') {
                fs::create_dir(dir.path().join(sub)).unwrap();
            } else {
                fs::write(dir.path().join(name), b"x").unwrap();
            }
        }
        dir
    }

    #[test]
    fn directories_are_recognised_by_what_the_server_writes() {
        let cases: &[(&[&str], Option<Found>)] = &[
            (&[], Some(Found::Empty)),
            (&["lost+found/", PROBE], Some(Found::Empty)),
            (
                &["conf", "db", "blobs/", "durable-tip"],
                Some(Found::Rollcall),
            ),
            (
                &["conf", "db", "blobs/", "snap.0000001"],
                Some(Found::Rollcall),
            ),
            // A first start that stopped half way.
            (&["conf", "blobs/"], Some(Found::Rollcall)),
            // The marker makes it ours whatever else was put there.
            (&["durable-tip", "README"], Some(Found::Rollcall)),
            (&["README"], None),
            (&["db", "README"], None),
        ];
        for (names, expected) in cases {
            let dir = holding(names);
            match (prepare(dir.path()), expected) {
                (Ok(found), Some(expected)) => assert_eq!(found, *expected, "{names:?}"),
                (Err(Error::DataDirectory { kind, .. }), None) => {
                    assert_eq!(kind, DataDirProblem::Foreign, "{names:?}");
                }
                (other, _) => panic!("{names:?}: {other:?}"),
            }
            assert!(!dir.path().join(PROBE).exists() || names.contains(&PROBE));
        }
    }
}
