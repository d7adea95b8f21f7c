//! The service-manager protocol, tested against a Unix datagram socket set as
//! `NOTIFY_SOCKET` (a real systemd is out of reach here): READY only after catch-up,
//! WATCHDOG pings while healthy and none while the mirror loop is stuck, STOPPING on
//! SIGTERM.

mod common;
mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::{read_sink_ids, writers, DaemonConfig};

/// Collects datagrams from the daemon, each with its arrival time.
struct NotifySocket {
    socket: UnixDatagram,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            _dir: dir,
            path,
        }
    }

    /// Messages received within `window`.
    fn drain(&self, window: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                out.push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                ));
            }
        }
        out
    }

    /// Waits for a message containing `needle`; returns it and everything before it.
    fn wait_for(&self, needle: &str, timeout: Duration) -> Option<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = message.lines().any(|l| l == needle);
                seen.push(message);
                if hit {
                    return Some(seen);
                }
            }
        }
        None
    }
}

fn pings(messages: &[(Instant, String)]) -> usize {
    messages
        .iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_after_catch_up_watchdog_only_while_progressing_and_stopping_on_sigterm() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    // A backlog, so READY has something to wait for.
    writers::execute(
        db.url(),
        &format!(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id) \
             SELECT '{org}', 'organization.user.invited', 'user', 'usr_' || g FROM generate_series(1, 20000) g"
        ),
    )
    .await;
    let notify = NotifySocket::bind();
    let daemon = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning")
        .with("COMPARTMENT_AUDIT_MIRROR_BATCH_SIZE", "500")
        .with("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .with("WATCHDOG_USEC", "1000000")
        .spawn();

    // READY comes only once the backlog is in the sink.
    let before_ready = notify
        .wait_for("READY=1", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no READY=1: {}", daemon.log_text()));
    let written = read_sink_ids(&sink).len();
    assert_eq!(
        written, 20_000,
        "READY before catch-up: only {written} of 20000 lines written"
    );
    assert!(
        before_ready.last().unwrap().contains("STATUS="),
        "READY carries a status line"
    );

    // Healthy: pings at half the watchdog period (0.5 s).
    let healthy = notify.drain(Duration::from_secs(3));
    assert!(
        pings(&healthy) >= 3,
        "expected watchdog pings while healthy, got {healthy:?}"
    );

    // Stuck: the mirror's next read blocks on a lock held by this test.
    let mut blocker = db.connect().await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    // The loop goes stale after 3 poll intervals (1 s each in tests), at least 5 s.
    let _ = notify.drain(Duration::from_secs(7));
    let stuck = notify.drain(Duration::from_secs(3));
    assert_eq!(
        pings(&stuck),
        0,
        "watchdog pinged while the mirror loop was stuck: {stuck:?}"
    );
    let (status, body) = daemon.get("/readyz").expect("readyz answers while stuck");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no progress"), "{body}");

    // Unstuck: pings resume.
    tx.rollback().await.unwrap();
    let resumed = notify.drain(Duration::from_secs(3));
    assert!(
        pings(&resumed) >= 2,
        "watchdog pings did not resume: {resumed:?}"
    );

    // SIGTERM: STOPPING, then exit 0.
    let pid_log = daemon.log.clone();
    let status = daemon.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(pid_log).unwrap_or_default()
    );
    let after = notify.drain(Duration::from_millis(500));
    assert!(
        after
            .iter()
            .any(|(_, m)| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_without_the_sink_once_serving() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let notify = NotifySocket::bind();
    let mut config = DaemonConfig::new(db.url(), &dir.path().join("unused"), dir.path())
        .with("NOTIFY_SOCKET", notify.path.to_str().unwrap());
    config.sink_dir = None;
    let daemon = config.spawn();
    assert!(
        notify
            .wait_for("READY=1", Duration::from_secs(30))
            .is_some(),
        "no READY=1: {}",
        daemon.log_text()
    );
    assert!(
        !dir.path().join("unused").exists(),
        "a disabled sink must not create its directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_while_the_sink_cannot_be_written_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let fs = match support::tmpfs::Tmpfs::mount(&dir.path().join("mnt"), 256 * 1024) {
        Ok(fs) => fs,
        Err(why) => {
            support::capability::missing("a tmpfs for the full-disk start-up test", &why);
            return;
        }
    };
    let db = common::TestDb::new().await;
    let sink = fs.path().join("sink");
    let org = writers::create_org(db.url(), "acme-dev").await;
    let config = DaemonConfig::new(db.url(), &sink, dir.path())
        .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning");
    // A first run writes a few events; a crash then leaves a torn last line, which
    // start-up recovery must write aside, and the disk fills while the daemon is down.
    let first = config.spawn();
    writers::execute(
        db.url(),
        &format!(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id) \
             SELECT '{org}', 'organization.user.invited', 'user', 'usr_' || g FROM generate_series(1, 10) g"
        ),
    )
    .await;
    assert!(support::wait_for_lines(&sink, 10, Duration::from_secs(60)).await);
    first.kill();
    let mut active = std::fs::OpenOptions::new()
        .append(true)
        .open(sink.join("audit.ndjson"))
        .unwrap();
    std::io::Write::write_all(&mut active, b"{\"id\":999999,\"event_type\":\"torn").unwrap();
    drop(active);
    fs.fill().unwrap();

    let notify = NotifySocket::bind();
    let daemon = config
        .with("NOTIFY_SOCKET", notify.path.to_str().unwrap())
        .spawn();
    let body = daemon
        .wait_not_ready(Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no readiness answer: {}", daemon.log_text()));
    assert!(body.contains("No space left"), "{body}");
    // Several retries while full, and not one READY.
    let while_full = notify.drain(Duration::from_secs(4));
    assert!(
        !while_full
            .iter()
            .any(|(_, m)| m.lines().any(|l| l == "READY=1")),
        "READY=1 while the sink cannot be written: {while_full:?}"
    );
    assert!(
        while_full.iter().any(|(_, m)| m.contains("STATUS=")),
        "no status line says why it waits: {while_full:?}"
    );

    // Space again: READY, once the sink has opened and caught up.
    fs.free().unwrap();
    notify
        .wait_for("READY=1", Duration::from_secs(60))
        .unwrap_or_else(|| panic!("no READY=1 after freeing space: {}", daemon.log_text()));
    assert_eq!(read_sink_ids(&sink).len(), 10);
}
