//! Directory hardening (SPEC §6, §12): owner-only modes whatever the umask, no
//! symlink ever followed, refusals with clear errors, foreign files left alone.

mod sink_support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use compartment_auditd::sink::{DirProblem, FileSink, SinkError};
use rustix::fs::Mode;
use sink_support::*;

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn open_err(opts: compartment_auditd::sink::SinkOptions) -> SinkError {
    match FileSink::open(opts, manual_clock()) {
        Ok(_) => panic!("the sink opened, but it must be refused"),
        Err(e) => e,
    }
}

#[test]
fn everything_created_is_owner_only_even_with_a_permissive_umask() {
    if !in_child() {
        run_child(
            "everything_created_is_owner_only_even_with_a_permissive_umask",
            &[],
            None,
        );
        return;
    }
    // Child: the umask is process-wide, hence the separate process.
    rustix::process::umask(Mode::empty());
    let tmp = tempfile::tempdir().unwrap();
    let parent = tmp.path().join("missing/parents");
    let dir = parent.join("sink");
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.compress_delay = Duration::ZERO;
    let (mut sink, _) = open(opts.clone(), clock.clone());
    put(&mut sink, &batch(1, 3));
    sink.rotate_now().unwrap();
    put(&mut sink, &batch(4, 5));
    sink.write_state(&serde_json::json!({"system_identifier": "7345"}))
        .unwrap();
    wait_until("the rotated file is compressed", || {
        plain_rotated(&dir).is_empty() && gz_rotated(&dir).len() == 1
    });
    sink.close().unwrap();
    // A torn tail makes the sink create a fragment file at the next open.
    fs::OpenOptions::new()
        .append(true)
        .open(dir.join("audit.ndjson"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"id\":6,"))
        .unwrap();
    let (sink, recovery) = open(opts, clock);
    assert!(recovery.fragment.is_some());
    drop(sink);

    assert_eq!(mode(&dir), 0o700);
    assert_eq!(
        mode(&parent),
        0o700,
        "missing parents are created owner-only"
    );
    let created = names(&dir);
    for kind in [
        "audit.ndjson",
        ".audit.lock",
        ".audit-state.json",
        ".audit-active.json",
        ".gz",
        "torn-",
    ] {
        assert!(
            created.iter().any(|n| n.contains(kind)),
            "no {kind} in {created:?}"
        );
    }
    for name in created {
        assert_eq!(mode(&dir.join(&name)), 0o600, "{name}");
    }
}

#[test]
fn an_existing_0755_directory_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o755);
    let (_sink, _) = open(options(&dir), manual_clock());
    assert_eq!(mode(&dir), 0o700);
}

#[test]
fn loose_files_of_the_sink_are_made_owner_only_again() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let (mut sink, _) = open(options(&dir), manual_clock());
    put(&mut sink, &line(1));
    sink.close().unwrap();
    set_mode(&dir.join("audit.ndjson"), 0o644);
    fs::write(dir.join("notes.txt"), "operator's").unwrap();
    set_mode(&dir.join("notes.txt"), 0o644);

    let (_sink, _) = open(options(&dir), manual_clock());
    assert_eq!(mode(&dir.join("audit.ndjson")), 0o600);
    assert_eq!(
        mode(&dir.join("notes.txt")),
        0o644,
        "foreign files are left alone"
    );
}

#[test]
fn group_bits_are_kept_only_when_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    fs::create_dir(&dir).unwrap();
    // What a Kubernetes fsGroup volume looks like: setgid, group rwx.
    set_mode(&dir, 0o2770);
    let mut opts = options(&dir);
    opts.allow_group_bits = true;
    let (mut sink, _) = open(opts.clone(), manual_clock());
    put(&mut sink, &line(1));
    drop(sink);
    assert_eq!(mode(&dir), 0o2770);
    assert_eq!(
        mode(&dir.join("audit.ndjson")),
        0o600,
        "new files are still owner-only"
    );

    // A remount adds group bits to the files too; tolerated, other bits are not.
    set_mode(&dir.join("audit.ndjson"), 0o664);
    let (sink, _) = open(opts, manual_clock());
    drop(sink);
    assert_eq!(mode(&dir.join("audit.ndjson")), 0o660);

    let (_sink, _) = open(options(&dir), manual_clock());
    assert_eq!(mode(&dir), 0o700, "without the option the group bits go");
    assert_eq!(mode(&dir.join("audit.ndjson")), 0o600);
}

#[test]
fn a_world_writable_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o777);
    for allow_group_bits in [false, true] {
        let mut opts = options(&dir);
        opts.allow_group_bits = allow_group_bits;
        let err = open_err(opts);
        assert!(
            matches!(
                err,
                SinkError::Directory {
                    problem: DirProblem::WorldWritable { mode: 0o777 },
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("world-writable"), "{err}");
    }
    assert!(
        names(&dir).is_empty(),
        "nothing may be created in a refused directory"
    );
    assert_eq!(mode(&dir), 0o777, "a refused directory is not changed");
}

#[test]
fn a_symlinked_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    fs::create_dir(&real).unwrap();
    set_mode(&real, 0o700);
    let link = tmp.path().join("sink");
    symlink(&real, &link).unwrap();

    for path in [link.clone(), link.join("")] {
        let err = open_err(options(&path));
        assert!(
            matches!(
                err,
                SinkError::Directory {
                    problem: DirProblem::Symlink,
                    ..
                }
            ),
            "{}: {err}",
            path.display()
        );
    }
    assert!(names(&real).is_empty(), "the symlink was followed");
}

#[test]
fn a_symlink_where_the_sink_expects_its_file_is_refused_not_followed() {
    for name in [
        "audit.ndjson",
        ".audit-state.json",
        ".audit-active.json",
        ".audit.lock",
        "audit-20260512T091403Z.ndjson",
        "audit-20260512T091403Z.ndjson.gz",
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sink");
        fs::create_dir(&dir).unwrap();
        set_mode(&dir, 0o700);
        let target = tmp.path().join("elsewhere");
        fs::write(&target, b"not the sink's\n").unwrap();
        symlink(&target, dir.join(name)).unwrap();

        let err = open_err(options(&dir));
        assert!(
            matches!(&err, SinkError::Symlink { name: n, .. } if n == name),
            "{name}: {err}"
        );
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(fs::read(&target).unwrap(), b"not the sink's\n");
        assert!(fs::symlink_metadata(dir.join(name))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    // A dangling symlink is refused too (O_EXCL would not create through it either).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    fs::create_dir(&dir).unwrap();
    symlink(tmp.path().join("nowhere"), dir.join("audit.ndjson")).unwrap();
    assert!(matches!(open_err(options(&dir)), SinkError::Symlink { .. }));
    assert!(!tmp.path().join("nowhere").exists());
}

#[test]
fn a_directory_owned_by_another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        sink_support::capability::missing(
            "the foreign-owner test",
            "needs root to chown a directory to another user",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o700);
    std::os::unix::fs::chown(&dir, Some(4242), Some(4242)).unwrap();
    let err = open_err(options(&dir));
    assert!(
        matches!(
            err,
            SinkError::Directory {
                problem: DirProblem::ForeignOwner { owner: 4242, .. },
                ..
            }
        ),
        "{err}"
    );
    assert!(names(&dir).is_empty());
}

#[test]
fn a_file_in_place_of_the_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sink");
    fs::write(&path, b"").unwrap();
    let err = open_err(options(&path));
    assert!(
        matches!(
            err,
            SinkError::Directory {
                problem: DirProblem::NotADirectory,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn foreign_files_are_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    fs::create_dir(&dir).unwrap();
    let foreign = [
        "notes.txt",
        "audit.ndjson.1",
        "audit-old.ndjson.gz",
        "audit-20260512T091403Z-1.ndjson.gz",
        "audit-20200101T000000Z.ndjson.gz.bak",
        ".hidden.tmp",
        ".audit.ndjson.swp",
    ];
    for name in foreign {
        fs::write(dir.join(name), name).unwrap();
    }
    let clock = manual_clock();
    let mut opts = options(&dir);
    opts.compress_delay = Duration::ZERO;
    opts.retention_files = 1;
    let (mut sink, _) = open(opts, clock.clone());
    for id in 1..=5 {
        put(&mut sink, &line(id));
        sink.rotate_now().unwrap();
        clock.advance(Duration::from_secs(1));
    }
    wait_until("retention leaves one file", || {
        plain_rotated(&dir).is_empty() && gz_rotated(&dir).len() == 1
    });
    sink.close().unwrap();
    let (_sink, _) = open(options(&dir), clock);
    for name in foreign {
        assert_eq!(
            fs::read_to_string(dir.join(name)).unwrap(),
            name,
            "{name} was touched"
        );
    }
}

#[test]
fn a_second_sink_on_the_same_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let (first, _) = open(options(&dir), manual_clock());
    let err = open_err(options(&dir));
    assert!(matches!(err, SinkError::Locked { .. }), "{err}");
    drop(first);
    let (_second, _) = open(options(&dir), manual_clock());
}

#[test]
fn writes_go_to_the_opened_directory_even_if_its_path_is_swapped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sink");
    let (mut sink, _) = open(options(&dir), manual_clock());
    put(&mut sink, &line(1));

    // Someone moves the directory away and plants a symlink to a decoy.
    let moved = tmp.path().join("moved");
    fs::rename(&dir, &moved).unwrap();
    let decoy = tmp.path().join("decoy");
    fs::create_dir(&decoy).unwrap();
    symlink(&decoy, &dir).unwrap();

    put(&mut sink, &line(2));
    sink.rotate_now().unwrap();
    put(&mut sink, &line(3));
    assert!(names(&decoy).is_empty(), "the sink followed the new path");
    assert_eq!(ids(&everything(&moved)), [1, 2, 3]);
}

/// Under `CI=true` a test whose capability is missing fails instead of passing as
/// skipped: the foreign-owner test above, run again as `nobody` (so without root),
/// fails with `CI=true` and says `SKIPPED` and passes without it.
#[test]
fn a_missing_capability_fails_under_ci_and_is_skipped_elsewhere() {
    if !rustix::process::geteuid().is_root() {
        sink_support::capability::missing(
            "the CI capability check",
            "needs root to run a test as another user",
        );
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    for ci in ["true", ""] {
        let output = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&exe)
            .args([
                "--exact",
                "a_directory_owned_by_another_user_is_refused",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CI", ci)
            .env("TMPDIR", "/tmp")
            .output()
            .expect("runuser runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            text.contains("1 passed") || text.contains("1 failed"),
            "CI={ci:?}: the test did not run: {text}"
        );
        if ci == "true" {
            assert!(
                !output.status.success(),
                "CI=true passed a skipped test: {text}"
            );
            assert!(text.contains("CI=true and"), "{text}");
        } else {
            assert!(output.status.success(), "{text}");
            assert!(text.contains("SKIPPED"), "{text}");
        }
    }
}
