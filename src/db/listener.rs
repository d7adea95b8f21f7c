//! The doorbell: a dedicated `LISTEN` connection (SPEC §12 "Notifications are lossy").
//!
//! A notification only says "something was inserted"; the mirror always reads rows
//! from the table. The connection is dedicated (never pooled: a pooled connection
//! would carry the `LISTEN` to whoever borrows it next) and its `Connection` is
//! driven with `poll_message`, because spawning the connection future discards
//! notifications. After every (re)connect it `LISTEN`s first and then rings once, so
//! that the mirror catches up on anything committed while it was disconnected. A
//! heartbeat query with a deadline notices a half-open socket long before TCP would.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Notify};
use tokio_postgres::AsyncMessage;
use tokio_util::sync::CancellationToken;

use crate::db::backoff::Backoff;
use crate::db::{describe, Connector};
use crate::telemetry;

/// The channel the reference schema's trigger notifies.
pub const CHANNEL: &str = "compartment_audit_events";

/// How the listener behaves.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// Interval of the heartbeat query.
    pub heartbeat_interval: Duration,
    /// How long a heartbeat (or connect) may take before the connection is called dead.
    pub deadline: Duration,
    /// Longest pause between reconnect attempts.
    pub max_backoff: Duration,
}

/// What the rest of the daemon sees of the listener.
#[derive(Debug, Clone)]
pub struct Doorbell {
    /// Rung on every notification and after every (re)connect; a ring while nobody
    /// waits is kept (one permit), so none is missed between two waits.
    pub rings: Arc<Notify>,
    /// True while the connection is up and `LISTEN` has succeeded.
    pub subscribed: watch::Receiver<bool>,
    /// The last connection error, for readiness; `None` while subscribed.
    pub last_error: watch::Receiver<Option<String>>,
}

/// Starts the listener task; it runs until `shutdown` is cancelled.
pub fn spawn(
    connector: Connector,
    options: ListenerOptions,
    shutdown: CancellationToken,
) -> Doorbell {
    let rings = Arc::new(Notify::new());
    let (subscribed_tx, subscribed) = watch::channel(false);
    let (error_tx, last_error) = watch::channel(Some("not connected yet".to_string()));
    let doorbell = Doorbell {
        rings: rings.clone(),
        subscribed,
        last_error,
    };
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), options.max_backoff);
        loop {
            let result = session(
                &connector,
                &options,
                &rings,
                &subscribed_tx,
                &error_tx,
                &shutdown,
            )
            .await;
            // A session that got as far as LISTEN was a success: start the next
            // reconnect from the shortest delay again.
            if subscribed_tx.send_replace(false) {
                backoff.reset();
            }
            telemetry::mirror::listener_connected(false);
            match result {
                Ok(()) => return,
                Err(err) => {
                    let message = err.to_string();
                    telemetry::mirror::listener_disconnected(&message);
                    error_tx.send_replace(Some(message));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    });
    doorbell
}

/// Why a listener session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot connect to the database: {}", describe(.0))]
    Connect(#[source] tokio_postgres::Error),
    #[error("connecting to the database timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("LISTEN failed: {0}")]
    Listen(#[source] tokio_postgres::Error),
    #[error("the listener connection failed: {0}")]
    Connection(#[source] tokio_postgres::Error),
    #[error("the listener connection was closed by the server")]
    Closed,
    #[error("heartbeat failed: {0}")]
    Heartbeat(#[source] tokio_postgres::Error),
    #[error("heartbeat got no answer within {0:?}")]
    HeartbeatTimeout(Duration),
}

/// What the connection driver forwards to the session.
enum ConnectionEvent {
    Notification,
    Failed(tokio_postgres::Error),
}

/// One connection's life: connect, LISTEN, ring, then wait for notifications.
/// Returns `Ok` only on shutdown.
async fn session(
    connector: &Connector,
    options: &ListenerOptions,
    rings: &Notify,
    subscribed: &watch::Sender<bool>,
    last_error: &watch::Sender<Option<String>>,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let connect = connector.connect();
    let (client, mut connection) = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        result = tokio::time::timeout(options.deadline, connect) => match result {
            Err(_) => return Err(SessionError::ConnectTimeout(options.deadline)),
            Ok(Err(err)) => return Err(SessionError::Connect(err)),
            Ok(Ok(pair)) => pair,
        },
    };

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if events_tx.send(ConnectionEvent::Notification).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(err) => {
                    let _ = events_tx.send(ConnectionEvent::Failed(err));
                    return;
                }
            }
        }
        // The stream ends when the server closes the connection; dropping the sender
        // tells the session.
    });
    // The driver ends with the connection; aborting it on every exit path means a
    // session never leaves a connection behind.
    let _abort = AbortOnDrop(driver);

    match tokio::time::timeout(
        options.deadline,
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await
    {
        Err(_) => return Err(SessionError::HeartbeatTimeout(options.deadline)),
        Ok(Err(err)) => return Err(SessionError::Listen(err)),
        Ok(Ok(())) => {}
    }
    subscribed.send_replace(true);
    last_error.send_replace(None);
    telemetry::mirror::listener_connected(true);
    // Catch up on whatever was committed while nobody listened.
    rings.notify_one();

    let mut heartbeat = tokio::time::interval(options.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            event = events.recv() => match event {
                Some(ConnectionEvent::Notification) => {
                    telemetry::mirror::notification_received();
                    rings.notify_one();
                }
                Some(ConnectionEvent::Failed(err)) => return Err(SessionError::Connection(err)),
                None => return Err(SessionError::Closed),
            },
            _ = heartbeat.tick() => {
                match tokio::time::timeout(options.deadline, client.simple_query("SELECT 1")).await {
                    Err(_) => return Err(SessionError::HeartbeatTimeout(options.deadline)),
                    Ok(Err(err)) => return Err(SessionError::Heartbeat(err)),
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
