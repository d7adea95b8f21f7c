//! Configuration reload in a running daemon: a file change (seen through the
//! directory, like a Kubernetes ConfigMap's symlink swap) and SIGHUP each change a
//! reloadable setting, observed through behaviour; a broken edit is refused and the
//! daemon keeps running on its previous settings.

mod common;
mod support;

use std::path::Path;
use std::time::Duration;

use compartment_auditd::sink::ROTATE_MIN_AGE;
use support::{wait_for, wait_for_lines, writers, DaemonConfig};

const SUCCESS: &str = "compartment_audit_config_reloads_total{result=\"success\"}";
const FAILURE: &str = "compartment_audit_config_reloads_total{result=\"failure\"}";

fn rotated(sink: &Path) -> usize {
    std::fs::read_dir(sink)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("audit-"))
                .count()
        })
        .unwrap_or(0)
}

/// Points `link` at `target` atomically, the way the kubelet updates a ConfigMap.
fn swap_symlink(link: &Path, target: &Path) {
    let tmp = link.with_extension("tmp-link");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

async fn insert(url: &str, org: uuid::Uuid, n: i32) {
    writers::execute(
        url,
        &format!(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, metadata) \
             SELECT '{org}', 'organization.group.updated', 'user', 'usr_' || g, \
                    jsonb_build_object('group_id', 'grp_' || g, 'group_name', repeat('x', 200)) \
             FROM generate_series(1, {n}) g"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_changes_and_sighup_reload_and_a_broken_edit_keeps_the_old_settings() {
    let db = common::TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("sink");
    let config_dir = dir.path().join("config");
    let real_dir = dir.path().join("real");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&real_dir).unwrap();
    let v1 = real_dir.join("v1.toml");
    let v2 = real_dir.join("v2.toml");
    std::fs::write(
        &v1,
        "[file_sink]\nrotate_size = \"1G\"\ncompress_delay = \"1h\"\n",
    )
    .unwrap();
    let config = config_dir.join("auditd.toml");
    swap_symlink(&config, &v1);

    let org = writers::create_org(db.url(), "acme-dev").await;
    let mut daemon_config = DaemonConfig::new(db.url(), &sink, dir.path());
    daemon_config
        .env
        .remove("COMPARTMENT_AUDIT_FILE_SINK_COMPRESS_DELAY");
    daemon_config.config_file = Some(config.clone());
    let mut daemon = daemon_config.spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "not ready: {}",
        daemon.log_text()
    );
    let successes = daemon
        .metric(SUCCESS)
        .expect("the reload metric is exported");

    insert(db.url(), org, 40).await;
    assert!(wait_for_lines(&sink, 40, Duration::from_secs(60)).await);
    assert_eq!(rotated(&sink), 0, "1G rotate size: no rotation yet");

    // 1. The file changes (symlink swap in the watched directory): 4K rotations.
    std::fs::write(
        &v2,
        "[file_sink]\nrotate_size = \"4K\"\ncompress_delay = \"1h\"\n[retention]\ncleanup_cron = \"*/5 * * * *\"\n",
    )
    .unwrap();
    swap_symlink(&config, &v2);
    let reloaded = wait_for(Duration::from_secs(20), async || {
        (daemon.metric(SUCCESS)? > successes).then_some(())
    })
    .await;
    assert!(
        wait_for(Duration::from_secs(10), async || daemon
            .log_text()
            .contains("cron=*/5 * * * *")
            .then_some(()))
        .await
        .is_some(),
        "the retention scheduler was not restarted with the reloaded cron: {}",
        daemon.log_text()
    );
    assert!(
        reloaded.is_some(),
        "the file change was not picked up: {}",
        daemon.log_text()
    );
    // Two batches, each when the active file is old enough to be rotated by size
    // (a file is rotated at most once per batch).
    tokio::time::sleep(ROTATE_MIN_AGE).await;
    insert(db.url(), org, 20).await;
    assert!(wait_for_lines(&sink, 60, Duration::from_secs(60)).await);
    tokio::time::sleep(ROTATE_MIN_AGE).await;
    insert(db.url(), org, 20).await;
    assert!(wait_for_lines(&sink, 80, Duration::from_secs(60)).await);
    assert!(
        rotated(&sink) >= 2,
        "the reloaded 4K rotate size applies: {} rotated files",
        rotated(&sink)
    );

    // 2. An edit the watcher cannot see (behind the symlink, outside the watched
    //    directory) waits for SIGHUP: debug logging.
    let before = daemon.metric(SUCCESS).unwrap();
    std::fs::write(
        &v2,
        "[file_sink]\nrotate_size = \"4K\"\ncompress_delay = \"1h\"\n[retention]\ncleanup_cron = \"*/5 * * * *\"\n[log]\nlevel = \"debug\"\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        daemon.metric(SUCCESS),
        Some(before),
        "nothing reloads without a signal"
    );
    daemon.hangup();
    assert!(
        wait_for(Duration::from_secs(20), async || (daemon
            .metric(SUCCESS)?
            > before)
            .then_some(()))
        .await
        .is_some(),
        "SIGHUP did not reload"
    );
    insert(db.url(), org, 5).await;
    assert!(
        wait_for(Duration::from_secs(20), async || daemon
            .log_text()
            .contains("DEBUG")
            .then_some(()))
        .await
        .is_some(),
        "the reloaded log level did not apply"
    );

    // 3. A broken edit: refused, counted, the daemon keeps running on the old settings.
    std::fs::write(&v2, "[file_sink]\nrotate_size = \"lots\"\n").unwrap();
    daemon.hangup();
    assert!(
        wait_for(Duration::from_secs(20), async || (daemon
            .metric(FAILURE)?
            >= 1.0)
            .then_some(()))
        .await
        .is_some(),
        "the broken configuration was not reported"
    );
    assert!(daemon.is_running());
    assert!(
        daemon.log_text().contains("file_sink.rotate_size"),
        "the error names the key"
    );
    let rotated_before = rotated(&sink);
    tokio::time::sleep(ROTATE_MIN_AGE).await;
    insert(db.url(), org, 40).await;
    assert!(wait_for_lines(&sink, 125, Duration::from_secs(60)).await);
    assert!(
        rotated(&sink) > rotated_before,
        "still rotating at 4K after the refused edit"
    );
    assert!(daemon.wait_ready(Duration::from_secs(5)).await);
}
