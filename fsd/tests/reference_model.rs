//! Reference-model property test: random sequences of file operations run on a mounted
//! `/home` volume and on a local directory; every operation must give the same result
//! (success or the same errno) and the two trees must end up identical (paths, types,
//! sizes, contents, modes, link counts, symlink targets). Failing cases are saved in
//! `tests/reference_model.proptest-regressions` and replayed first on every run.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{require_fuse_and_root, volume, Mount, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

/// Paths an operation may name, relative to the case's root. Directories and files
/// share names so that type clashes (EISDIR, ENOTDIR, ENOTEMPTY) come up often.
const PATHS: &[&str] = &[
    "a", "b", "c", "d", "d/a", "d/b", "d/e", "d/e/a", "e", "e/a", "e/d",
];
/// Symlink targets: relative, so they resolve inside the case's root in both trees.
const TARGETS: &[&str] = &["a", "b", "d", "d/a", "../a", "missing", "e/a"];

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Write {
        path: usize,
        offset: u64,
        len: usize,
        byte: u8,
    },
    Truncate(usize, u64),
    Rename(usize, usize),
    Mkdir(usize),
    Rmdir(usize),
    Unlink(usize),
    Link(usize, usize),
    Symlink(usize, usize),
    Chmod(usize, u32),
    Read(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        3 => p.clone().prop_map(Op::Create),
        4 => (p.clone(), 0u64..10_000, 0usize..6_000, any::<u8>())
            .prop_map(|(path, offset, len, byte)| Op::Write { path, offset, len, byte }),
        1 => (p.clone(), 0u64..12_000).prop_map(|(a, s)| Op::Truncate(a, s)),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        3 => p.clone().prop_map(Op::Mkdir),
        1 => p.clone().prop_map(Op::Rmdir),
        1 => p.clone().prop_map(Op::Unlink),
        1 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (0..TARGETS.len(), p.clone()).prop_map(|(t, b)| Op::Symlink(t, b)),
        1 => (p.clone(), prop::sample::select(vec![0o600u32, 0o644, 0o755, 0o700, 0o444]))
            .prop_map(|(a, m)| Op::Chmod(a, m)),
        1 => p.prop_map(Op::Read),
    ]
}

/// Result of one operation: Ok with what was read, or the errno.
type Outcome = Result<Vec<u8>, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn apply(root: &Path, op: &Op) -> Outcome {
    let at = |i: usize| root.join(PATHS[i]);
    let done = |r: std::io::Result<()>| r.map(|()| Vec::new()).map_err(errno);
    match op {
        Op::Create(a) => done(fs::File::create(at(*a)).map(drop)),
        Op::Write {
            path,
            offset,
            len,
            byte,
        } => done((|| {
            let mut f = OpenOptions::new().write(true).open(at(*path))?;
            f.seek(SeekFrom::Start(*offset))?;
            f.write_all(&vec![*byte; *len])?;
            f.sync_all()
        })()),
        Op::Truncate(a, size) => done((|| {
            OpenOptions::new().write(true).open(at(*a))?.set_len(*size)
        })()),
        Op::Rename(a, b) => done(fs::rename(at(*a), at(*b))),
        Op::Mkdir(a) => done(fs::create_dir(at(*a))),
        Op::Rmdir(a) => done(fs::remove_dir(at(*a))),
        Op::Unlink(a) => done(fs::remove_file(at(*a))),
        Op::Link(a, b) => done(fs::hard_link(at(*a), at(*b))),
        Op::Symlink(t, b) => {
            // A target relative to the link's own directory: same in both trees.
            done(symlink(TARGETS[*t], at(*b)))
        }
        Op::Chmod(a, mode) => done(fs::set_permissions(
            at(*a),
            fs::Permissions::from_mode(*mode),
        )),
        Op::Read(a) => fs::read(at(*a)).map_err(errno),
    }
}

/// One node of a tree snapshot.
#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
    },
    File {
        mode: u32,
        nlink: u64,
        data: Vec<u8>,
    },
    Link {
        target: PathBuf,
    },
}

fn snapshot(root: &Path) -> Vec<(PathBuf, Node)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(root.join(&rel))
            .expect("listing a directory of the snapshot")
            .map(|e| e.expect("directory entry").file_name())
            .collect();
        entries.sort();
        for name in entries {
            let rel = rel.join(name);
            let path = root.join(&rel);
            let meta = fs::symlink_metadata(&path).expect("lstat in snapshot");
            let node = if meta.file_type().is_symlink() {
                Node::Link {
                    target: fs::read_link(&path).expect("readlink"),
                }
            } else if meta.is_dir() {
                stack.push(rel.clone());
                Node::Dir {
                    mode: meta.mode() & 0o7777,
                }
            } else {
                // Read as root: modes never stop us.
                Node::File {
                    mode: meta.mode() & 0o7777,
                    nlink: meta.nlink(),
                    data: fs::read(&path).expect("reading a file of the snapshot"),
                }
            };
            out.push((rel, node));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn random_operations_match_a_local_directory() {
    require_fuse_and_root();
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = Server::start(tmp.path());
    let mount = Mount::start(&server, &volume("model"), &tmp.path().join("mnt"));
    // The reference: a local directory on the same machine (tmpfs or ext4).
    let local = tmp.path().join("local");
    fs::create_dir(&local).unwrap();

    let config = Config {
        cases: 64,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/reference_model.proptest-regressions",
        ))),
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let case = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (home, reference) = (
            mount.path.join(format!("c{case}")),
            local.join(format!("c{case}")),
        );
        fs::create_dir(&home).map_err(|e| TestCaseError::fail(format!("mkdir on mount: {e}")))?;
        fs::create_dir(&reference).unwrap();
        for (i, op) in ops.iter().enumerate() {
            let want = apply(&reference, op);
            let got = apply(&home, op);
            prop_assert_eq!(&got, &want, "op #{} {:?} differs (mount vs local)", i, op);
        }
        prop_assert_eq!(snapshot(&home), snapshot(&reference), "final trees differ");
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    let mut mount = mount;
    assert!(mount.stop(), "mount did not exit 0");
}
