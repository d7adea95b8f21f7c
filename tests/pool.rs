//! The shared connection pool gives back what a burst opened: connections unused for
//! `database.pool_idle_timeout` are closed, on the server too, while one in use stays.

mod common;

use std::time::Duration;

use compartment_auditd::config::Settings;
use compartment_auditd::db;
use tokio_util::sync::CancellationToken;

async fn server_sessions(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            &[&db::APPLICATION_NAME],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_unused_for_the_idle_timeout_are_closed_and_one_in_use_stays() {
    let test_db = common::TestDb::new().await;
    let mut settings = Settings::with_defaults(test_db.url()).database;
    settings.pool_idle_timeout = Duration::from_secs(1);
    let pool = db::pool(&settings).await.unwrap();
    let observer = test_db.connect().await;
    // Sessions of the test harness itself, if any, under the same name.
    let others = server_sessions(&observer).await;

    // A burst: four at once.
    let burst: Vec<_> = futures_util::future::join_all((0..4).map(|_| pool.get()))
        .await
        .into_iter()
        .map(|c| c.unwrap())
        .collect();
    for client in &burst {
        client.simple_query("SELECT 1").await.unwrap();
    }
    drop(burst);
    assert_eq!(pool.status().size, 4);
    assert_eq!(server_sessions(&observer).await - others, 4);

    let shutdown = CancellationToken::new();
    let reaper = tokio::spawn(db::close_idle_connections(
        pool.clone(),
        settings.pool_idle_timeout,
        shutdown.clone(),
    ));
    // One connection stays busy, used every 200 ms (the most recently used one is
    // handed out first, so the others stay unused).
    let busy = {
        let pool = pool.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            while !shutdown.is_cancelled() {
                let client = pool.get().await.unwrap();
                client.simple_query("SELECT 1").await.unwrap();
                drop(client);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut closed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if pool.status().size == 1 && server_sessions(&observer).await - others == 1 {
            closed = true;
            break;
        }
    }
    shutdown.cancel();
    reaper.await.unwrap();
    busy.await.unwrap();
    assert!(
        closed,
        "pool size {} and {} server sessions after 10 s; expected 1 and 1",
        pool.status().size,
        server_sessions(&observer).await - others
    );
}
