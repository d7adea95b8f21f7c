//! Metrics and their log lines, in one place.
//!
//! Every metric lives in one registry, [`registry`], with per-metric
//! `compartment_audit_` names so that the standard `process_*` collector keeps its
//! names. Each component has its own submodule; an event function there emits the
//! log line and the metric together, so every metric name exists once.

pub mod logging;
pub mod retention;

use std::sync::LazyLock;

use prometheus::Registry;

/// Prefix of every metric this daemon defines.
pub const PREFIX: &str = "compartment_audit";

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    {
        // Registering the process collector can only fail on a duplicate name, and
        // this is the only place that registers it.
        let _ = registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
    }
    registry
});

/// The process-wide metrics registry.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    let families = registry().gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_default()
}
