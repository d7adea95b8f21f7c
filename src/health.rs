//! Readiness: each component owns a named check and keeps it current.
//!
//! `/readyz` is ready when every registered check passes. A check is either set
//! explicitly (`set_ok` / `set_failing`), or kept alive by progress beats and turns
//! failing by itself when no beat came within its `stale_after` — how a stuck loop is
//! noticed without the loop's cooperation. A check can also be `degraded`
//! (`set_degraded`): still ready, but something an operator should look at (events
//! held back by a transaction elsewhere), reported with its reason.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The readiness checks of the process.
#[derive(Debug, Default)]
pub struct Health {
    /// Check name → state; a std mutex because it is never held across an `.await`.
    checks: Mutex<BTreeMap<&'static str, Check>>,
}

#[derive(Debug, Clone, Default)]
struct Check {
    /// `None` while passing, else why it fails.
    failure: Option<String>,
    /// Passing, but degraded: why.
    degraded: Option<String>,
    /// Last progress beat, for checks that go stale.
    last_beat: Option<Instant>,
    /// Fail when no beat came for this long.
    stale_after: Option<Duration>,
    /// Extra fields shown with the check (the leadership's role and leader).
    details: BTreeMap<&'static str, String>,
}

/// One check in a readiness report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CheckReport {
    /// `ok`, `degraded` or `failing`.
    pub status: &'static str,
    /// Why it fails (absent when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Extra fields of the check, e.g. `role` and `leader` of the leadership check.
    #[serde(flatten)]
    pub details: BTreeMap<&'static str, String>,
}

/// The whole readiness answer.
#[derive(Debug, Clone, Serialize)]
pub struct Readiness {
    /// `ready`, `degraded` (ready, with a degraded check) or `not_ready`.
    pub status: &'static str,
    /// Every check by name.
    pub checks: BTreeMap<&'static str, CheckReport>,
}

impl Readiness {
    /// True when every check passes (degraded ones included).
    pub fn is_ready(&self) -> bool {
        self.status != "not_ready"
    }
}

impl Health {
    /// An empty registry (ready until something registers a check).
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a check that starts failing with `message` until its owner says otherwise.
    pub fn register(&self, name: &'static str, message: &str) {
        self.with(|checks| {
            checks.insert(
                name,
                Check {
                    failure: Some(message.to_string()),
                    ..Check::default()
                },
            );
        });
    }

    /// Makes `name` fail unless `beat` is called at least every `stale_after`.
    pub fn expect_beats(&self, name: &'static str, stale_after: Duration) {
        self.with(|checks| {
            let check = checks.entry(name).or_default();
            check.stale_after = Some(stale_after);
            check.last_beat = Some(Instant::now());
        });
    }

    /// Stops expecting beats of `name` (its loop stopped on purpose, e.g. a standby).
    pub fn stop_beats(&self, name: &'static str) {
        self.with(|checks| {
            if let Some(check) = checks.get_mut(name) {
                check.stale_after = None;
            }
        });
    }

    /// Records progress of `name`.
    pub fn beat(&self, name: &'static str) {
        self.with(|checks| {
            if let Some(check) = checks.get_mut(name) {
                check.last_beat = Some(Instant::now());
            }
        });
    }

    /// Marks `name` as passing (and no longer degraded).
    pub fn set_ok(&self, name: &'static str) {
        self.set(name, None);
    }

    /// Marks `name` as passing but degraded, with a reason safe to show.
    pub fn set_degraded(&self, name: &'static str, message: impl Into<String>) {
        let message = message.into();
        self.with(|checks| {
            let check = checks.entry(name).or_default();
            check.failure = None;
            check.degraded = Some(message);
        });
    }

    /// Marks `name` as passing and shows `details` with it (replacing earlier ones).
    pub fn set_ok_with(&self, name: &'static str, details: Vec<(&'static str, String)>) {
        self.with(|checks| {
            let check = checks.entry(name).or_default();
            check.failure = None;
            check.degraded = None;
            check.details = details.into_iter().collect();
        });
    }

    /// Marks `name` as failing, with a reason safe to show (no secrets).
    pub fn set_failing(&self, name: &'static str, message: impl Into<String>) {
        self.set(name, Some(message.into()));
    }

    fn set(&self, name: &'static str, failure: Option<String>) {
        self.with(|checks| {
            let check = checks.entry(name).or_default();
            check.failure = failure;
            check.degraded = None;
        });
    }

    /// Removes a check (its component stopped on purpose).
    pub fn remove(&self, name: &'static str) {
        self.with(|checks| {
            checks.remove(name);
        });
    }

    /// Checks whose progress beats stopped (stuck loops), for the watchdog. A check
    /// that fails for another reason (database down) still beats and is not listed.
    pub fn stale_checks(&self) -> Vec<&'static str> {
        let now = Instant::now();
        self.with(|checks| {
            checks
                .iter()
                .filter(|(_, c)| c.is_stale(now))
                .map(|(name, _)| *name)
                .collect()
        })
    }

    /// The current readiness.
    pub fn report(&self) -> Readiness {
        let now = Instant::now();
        let checks: BTreeMap<_, _> = self.with(|checks| {
            checks
                .iter()
                .map(|(name, check)| (*name, check.report(now)))
                .collect()
        });
        let ready = checks.values().all(|c| c.status != "failing");
        let degraded = checks.values().any(|c| c.status == "degraded");
        Readiness {
            status: match (ready, degraded) {
                (false, _) => "not_ready",
                (true, true) => "degraded",
                (true, false) => "ready",
            },
            checks,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<&'static str, Check>) -> T) -> T {
        // A poisoned lock only means another thread panicked while holding it; the
        // map itself is always in a consistent state, so keep serving it.
        let mut guard = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

impl Check {
    fn is_stale(&self, now: Instant) -> bool {
        match (self.stale_after, self.last_beat) {
            (Some(stale_after), Some(last)) => now.saturating_duration_since(last) > stale_after,
            _ => false,
        }
    }

    fn report(&self, now: Instant) -> CheckReport {
        if let Some(message) = &self.failure {
            return CheckReport {
                status: "failing",
                message: Some(message.clone()),
                details: self.details.clone(),
            };
        }
        if let (true, Some(stale_after), Some(last)) =
            (self.is_stale(now), self.stale_after, self.last_beat)
        {
            let quiet = now.saturating_duration_since(last);
            return CheckReport {
                status: "failing",
                message: Some(format!(
                    "no progress for {}s (limit {}s)",
                    quiet.as_secs(),
                    stale_after.as_secs()
                )),
                details: self.details.clone(),
            };
        }
        if let Some(message) = &self.degraded {
            return CheckReport {
                status: "degraded",
                message: Some(message.clone()),
                details: self.details.clone(),
            };
        }
        CheckReport {
            status: "ok",
            message: None,
            details: self.details.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let health = Health::new();
        assert!(health.report().is_ready());
        health.register("database", "not connected yet");
        health.register("sink", "not opened yet");
        let report = health.report();
        assert!(!report.is_ready());
        assert_eq!(
            report.checks["database"].message.as_deref(),
            Some("not connected yet")
        );
        health.set_ok("database");
        health.set_ok("sink");
        assert!(health.report().is_ready());
        health.set_failing("sink", "disk full");
        assert_eq!(health.report().checks["sink"].status, "failing");
    }

    #[test]
    fn a_degraded_check_is_ready_but_says_why_and_failing_wins() {
        let health = Health::new();
        health.set_degraded("mirror", "held back");
        let report = health.report();
        assert!(report.is_ready());
        assert_eq!(report.status, "degraded");
        assert_eq!(report.checks["mirror"].status, "degraded");
        assert_eq!(
            report.checks["mirror"].message.as_deref(),
            Some("held back")
        );
        health.set_failing("mirror", "halted");
        assert!(!health.report().is_ready());
        assert_eq!(health.report().checks["mirror"].status, "failing");
        health.set_ok("mirror");
        assert_eq!(health.report().status, "ready");
        assert_eq!(health.report().checks["mirror"].status, "ok");
    }

    #[test]
    fn a_check_without_beats_goes_stale() {
        let health = Health::new();
        health.expect_beats("mirror", Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!health.report().is_ready());
        health.expect_beats("mirror", Duration::from_secs(3600));
        health.beat("mirror");
        assert!(health.report().is_ready());
    }
}
