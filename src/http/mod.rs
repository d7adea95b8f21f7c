//! HTTP: health, metrics and the `/v1` audit-event API.
