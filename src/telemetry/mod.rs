//! Metrics and their log lines, in one place.
//!
//! Every metric lives in one registry, [`registry`], with per-metric
//! `compartment_audit_` names so that the standard `process_*` collector keeps its
//! names. Each component has its own submodule; an event function there emits the
//! log line and the metric together, so every metric name exists once.

pub mod api;
pub mod config;
pub mod leader;
pub mod logging;
pub mod mirror;
pub mod retention;
pub mod sanitize;
pub mod sink;

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{IntGaugeVec, Opts, Registry};

/// Namespace of every metric this daemon defines.
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

static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(IntGaugeVec::new(
        Opts::new("build_info", "Always 1; the labels carry the version.").namespace(PREFIX),
        &["version"],
    ))
});

/// The process-wide metrics registry.
pub fn registry() -> &'static Registry {
    &REGISTRY
}

/// Registers a freshly built metric and returns it. Building can only fail on an
/// invalid name or label set, and registering only on a duplicate — both programming
/// errors caught by the first test that renders `/metrics`.
pub(crate) fn register<C>(metric: prometheus::Result<C>) -> C
where
    C: Collector + Clone + 'static,
{
    let metric = metric.expect("metric definitions are static and valid");
    registry()
        .register(Box::new(metric.clone()))
        .expect("each metric is registered once, from its LazyLock");
    metric
}

/// Registers every metric up front so `/metrics` shows all series from the start.
pub fn init() {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    api::init();
    config::init();
    leader::init();
    mirror::init();
    retention::init();
    sanitize::init();
    sink::init();
}

/// Renders every metric in the Prometheus text format.
pub fn render() -> String {
    let families = registry().gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_default()
}
