//! The gap-free cursor read against a real PostgreSQL: commit order, the visibility
//! horizon, and the row and byte bounds of one read.

mod common;

use compartment_auditd::db::cursor::{self, Position};

async fn insert(db: &common::TestDb, org: uuid::Uuid, n: i32, metadata_sql: &str) {
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, metadata) \
             SELECT '{org}', 'organization.group.updated', 'user', 'usr_' || g, {metadata_sql} \
             FROM generate_series(1, {n}) g"
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_read_stops_at_its_row_limit_or_byte_budget_and_says_more_is_waiting() {
    let db = common::TestDb::new().await;
    let org = db.insert_org("acme-dev").await;
    // ~320 KB of hex per row, which compresses poorly.
    insert(
        &db,
        org,
        30,
        "jsonb_build_object('group_name', (SELECT string_agg(md5(random()::text || s), '') FROM generate_series(1, 10000) s))",
    )
    .await;
    let client = db.client().await;
    // Other tests' open transactions in the same cluster may hold the horizon a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while cursor::read_batch(&client, Position::BEGINNING, 1000, i64::MAX)
        .await
        .unwrap()
        .events
        .len()
        < 30
    {
        assert!(
            std::time::Instant::now() < deadline,
            "rows never became readable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let budgeted = cursor::read_batch(&client, Position::BEGINNING, 1000, 1024 * 1024)
        .await
        .unwrap();
    assert!(
        (1..=8).contains(&budgeted.events.len()),
        "a 1 MiB budget returns a handful of 160+ KB rows, got {}",
        budgeted.events.len()
    );
    assert!(
        budgeted.more,
        "rows left behind by the budget are announced"
    );

    let one = cursor::read_batch(&client, Position::BEGINNING, 1000, 1)
        .await
        .unwrap();
    assert_eq!(
        one.events.len(),
        1,
        "the first row always comes, however large"
    );
    assert!(one.more);

    let limited = cursor::read_batch(&client, Position::BEGINNING, 10, i64::MAX)
        .await
        .unwrap();
    assert_eq!(limited.events.len(), 10);
    assert!(limited.more);

    let all = cursor::read_batch(&client, Position::BEGINNING, 1000, i64::MAX)
        .await
        .unwrap();
    assert_eq!(all.events.len(), 30);
    assert!(!all.more, "the end is not announced as more");

    // Reading on from each batch's end covers every row once, in order.
    let mut seen = Vec::new();
    let mut at = Position::BEGINNING;
    loop {
        let batch = cursor::read_batch(&client, at, 1000, 1024 * 1024)
            .await
            .unwrap();
        let Some(last) = batch.last_position() else {
            break;
        };
        seen.extend(batch.events.iter().map(|e| e.id));
        at = last;
    }
    let expected: Vec<i64> = all.events.iter().map(|e| e.id).collect();
    assert_eq!(seen, expected);
    let nothing = cursor::read_batch(&client, at, 1000, i64::MAX)
        .await
        .unwrap();
    assert!(nothing.events.is_empty() && !nothing.more);
}

#[tokio::test]
async fn rows_committed_behind_an_open_transaction_wait_for_it() {
    let db = common::TestDb::new().await;
    let org = db.insert_org("acme-dev").await;
    let mut early = db.connect().await;
    let early_tx = early.transaction().await.unwrap();
    // The early transaction takes its id (and xid) first...
    early_tx
        .execute(
            "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id) \
             VALUES ($1, 'organization.user.invited', 'user', 'early')",
            &[&org],
        )
        .await
        .unwrap();
    // ...a later one commits first.
    insert(&db, org, 1, "'{}'::jsonb").await;
    let client = db.client().await;
    let held = cursor::read_batch(&client, Position::BEGINNING, 1000, i64::MAX)
        .await
        .unwrap();
    assert!(
        held.events.is_empty(),
        "nothing may pass the open transaction: {:?}",
        held.events.iter().map(|e| &e.actor_id).collect::<Vec<_>>()
    );
    let wait = cursor::horizon_wait(&client, Position::BEGINNING)
        .await
        .unwrap();
    assert!(wait.wait.is_some(), "the wait is visible");

    early_tx.commit().await.unwrap();
    // Other tests' open transactions in the same cluster may hold the horizon a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let both = loop {
        let batch = cursor::read_batch(&client, Position::BEGINNING, 1000, i64::MAX)
            .await
            .unwrap();
        if batch.events.len() == 2 || std::time::Instant::now() > deadline {
            break batch;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let actors: Vec<&str> = both.events.iter().map(|e| e.actor_id.as_str()).collect();
    assert_eq!(actors.len(), 2);
    assert_eq!(
        actors[0], "early",
        "commit-order key: the early transaction sorts first"
    );
}
