//! Which database a sink's positions belong to, and whether the connected server is
//! still on the same line of its history.
//!
//! Positions are `(tx, id)` of one database: they mean nothing in another cluster
//! (`system_identifier`, checked in [`super`]), in another database of the same
//! cluster (its table has other rows under the same ids), or after a failover to an
//! asynchronous standby that had not received the last transactions: the promoted
//! server reissues transaction ids the mirror has already passed, and rows written
//! with them sort below the cursor and would never be mirrored.
//!
//! So the state file also records the database (oid and name) and the timeline. A
//! different oid stops the mirror (a renamed database keeps its oid and is followed).
//! A new timeline (failover, point-in-time recovery) is followed only once the last
//! mirrored event is confirmed on the new server; otherwise the mirror stops.

use tokio_postgres::GenericClient;

use crate::db::cursor::{self, Position, TIMELINE_SQL};
use crate::db::DbError;

use super::{MirrorError, SinkState};

/// The connected database, as recorded in the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `pg_control_system().system_identifier`.
    pub system_identifier: String,
    /// `pg_database.oid` of the current database.
    pub database_oid: u32,
    /// Its name.
    pub database_name: String,
    /// The server's timeline ([`TIMELINE_SQL`]).
    pub timeline: u32,
}

/// Reads the connected database's identity in one statement.
pub async fn current(client: &impl GenericClient) -> Result<Identity, DbError> {
    let sql = format!(
        "SELECT (SELECT system_identifier::text FROM pg_control_system()), d.oid, d.datname::text, \
                ({TIMELINE_SQL}) \
         FROM pg_database d WHERE d.datname = current_database()"
    );
    let row = client.query_one(&sql, &[]).await?;
    let timeline: i64 = row.try_get(3)?;
    Ok(Identity {
        system_identifier: row.try_get(0)?,
        database_oid: row.try_get(1)?,
        database_name: row.try_get(2)?,
        timeline: u32::try_from(timeline).map_err(|_| DbError::Data {
            reason: format!("not a timeline: {timeline}"),
        })?,
    })
}

/// Checks the stored state against the connected database (cluster first, then the
/// database) and returns the state to keep: with the database and timeline filled in
/// when an older state file lacked them, and the name updated after a rename. The
/// timeline is not compared here: see [`confirm_timeline`].
pub fn check(stored: &SinkState, found: &Identity) -> Result<SinkState, MirrorError> {
    if stored.system_identifier != found.system_identifier {
        return Err(MirrorError::IdentityChanged {
            expected: stored.system_identifier.clone(),
            found: found.system_identifier.clone(),
        });
    }
    let mut state = stored.clone();
    match stored.database_oid {
        Some(oid) if oid != found.database_oid => {
            return Err(MirrorError::DatabaseChanged {
                expected: describe(stored.database_name.as_deref(), oid),
                found: describe(Some(&found.database_name), found.database_oid),
            });
        }
        Some(_) => {
            if stored.database_name.as_deref() != Some(found.database_name.as_str()) {
                tracing::warn!(
                    recorded = stored.database_name.as_deref().unwrap_or_default(),
                    current = %found.database_name,
                    oid = found.database_oid,
                    "The sink's database was renamed (same oid); recording the new name"
                );
            }
        }
        None => tracing::info!(
            database = %found.database_name,
            oid = found.database_oid,
            timeline = found.timeline,
            "Recording the database and timeline in the sink's state file (written by an older version)"
        ),
    }
    state.database_oid = Some(found.database_oid);
    state.database_name = Some(found.database_name.clone());
    state.timeline.get_or_insert(found.timeline);
    Ok(state)
}

fn describe(name: Option<&str>, oid: u32) -> String {
    match name {
        Some(name) => format!("{name:?} (oid {oid})"),
        None => format!("oid {oid}"),
    }
}

/// After the server's timeline changed from `from` to `to`: confirms that the
/// connected server has what the mirror wrote up to `position` — the event there,
/// with the same transaction; or, if retention deleted it since, a position this sink
/// published at or after it; or, for a position that is no event (a baseline), a
/// transaction counter already past it. Otherwise it may reissue transaction ids
/// below the cursor, and the mirror must stop.
pub async fn confirm_timeline(
    client: &impl GenericClient,
    sink_id: &str,
    system_identifier: &str,
    position: Position,
    from: u32,
    to: u32,
) -> Result<(), MirrorError> {
    let lost = || MirrorError::TimelineChanged {
        from,
        to,
        last_event: format!("id {}, tx {}", position.id, position.tx),
    };
    if position == Position::BEGINNING {
        return Ok(());
    }
    if let Some(found) = cursor::position_of(client, position.id).await? {
        return if found == position {
            Ok(())
        } else {
            Err(lost())
        };
    }
    if let Some(published) = cursor::published_position(client, sink_id).await? {
        if published.system_identifier == system_identifier && published.position >= position {
            return Ok(());
        }
    }
    // A baseline taken from the horizon (`start_from = now`, rebaseline) names no event.
    if position.id == i64::MAX {
        let row = client
            .query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])
            .await
            .map_err(DbError::from)?;
        let xmin: String = row.try_get(0).map_err(DbError::from)?;
        if xmin.parse::<u64>().is_ok_and(|xmin| xmin > position.tx) {
            return Ok(());
        }
    }
    Err(lost())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored() -> SinkState {
        SinkState {
            version: 1,
            sink_id: "default".into(),
            system_identifier: "7345".into(),
            baseline: Position::BEGINNING,
            baseline_last_line_sha256: None,
            database_oid: Some(16384),
            database_name: Some("compartment".into()),
            timeline: Some(1),
            instance: None,
        }
    }

    fn found() -> Identity {
        Identity {
            system_identifier: "7345".into(),
            database_oid: 16384,
            database_name: "compartment".into(),
            timeline: 2,
        }
    }

    #[test]
    fn another_database_of_the_cluster_is_refused_and_named() {
        let other = Identity {
            database_oid: 16999,
            database_name: "staging".into(),
            ..found()
        };
        let err = check(&stored(), &other).expect_err("another database");
        assert!(err.is_permanent());
        let text = err.to_string();
        assert!(text.contains("\"compartment\" (oid 16384)"), "{text}");
        assert!(text.contains("\"staging\" (oid 16999)"), "{text}");
        assert!(text.contains("rebaseline"), "{text}");
    }

    #[test]
    fn another_cluster_is_refused_before_the_database() {
        let other = Identity {
            system_identifier: "9999".into(),
            database_oid: 1,
            ..found()
        };
        assert!(matches!(
            check(&stored(), &other),
            Err(MirrorError::IdentityChanged { .. })
        ));
    }

    #[test]
    fn a_rename_is_followed_and_old_state_files_are_adopted() {
        let renamed = Identity {
            database_name: "compartment_prod".into(),
            ..found()
        };
        let state = check(&stored(), &renamed).expect("same oid");
        assert_eq!(state.database_name.as_deref(), Some("compartment_prod"));
        assert_eq!(
            state.timeline,
            Some(1),
            "the timeline is confirmed elsewhere"
        );

        let old = SinkState {
            database_oid: None,
            database_name: None,
            timeline: None,
            ..stored()
        };
        let state = check(&old, &found()).expect("adopted");
        assert_eq!(state.database_oid, Some(16384));
        assert_eq!(state.database_name.as_deref(), Some("compartment"));
        assert_eq!(state.timeline, Some(2));
    }

    #[test]
    fn a_state_file_of_an_older_version_still_parses() {
        let state: SinkState = serde_json::from_value(serde_json::json!({
            "version": 1, "sink_id": "default", "system_identifier": "7345",
            "baseline": {"tx": 0, "id": 0}
        }))
        .expect("old layout");
        assert_eq!(state.database_oid, None);
        assert_eq!(state.timeline, None);
    }
}
