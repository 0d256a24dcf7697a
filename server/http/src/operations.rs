//! Operations: liveness (`/health/live`), readiness (`/health/ready`, and `/health` in the original
//! service's shape), the bus's health and the pipeline's figures (`/health/kafka`,
//! `/health/kafka/stats`), and Prometheus metrics (`/metrics`, `install_metrics`). Outbox ages are
//! measured against the state's clock.
//!
//! Readiness is the truth about writes: the writer is running (not reloading, not stopped), the
//! store answers, and the bus answers. Liveness only says the process serves requests.

use std::sync::OnceLock;
use std::sync::atomic::Ordering::Relaxed;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use wallex_pipeline::ports::Projection;
use wallex_pipeline::{Role, WriterState};

use crate::problem::store_problem;
use crate::{Problem, Queries, Shared};

/// Upper bounds of the latency histograms' buckets, in seconds: 0.25 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.008, 0.010, 0.012, 0.015, 0.020, 0.025, 0.030,
    0.040, 0.050, 0.060, 0.080, 0.100, 0.125, 0.150, 0.200, 0.250, 0.300, 0.400, 0.500, 0.750, 1.0, 2.0, 5.0, 10.0,
];

/// The Prometheus text format's content type, version 0.0.4.
const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long the bus may take to answer a readiness probe before it counts as unreachable.
pub const BUS_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The process is up and serving requests.
pub(crate) async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Every check readiness makes, and whether all passed.
struct Readiness {
    writer: &'static str,
    /// This instance's role in its cluster, if it is in one.
    role: Option<Role>,
    store: Result<(), String>,
    bus: Result<(), String>,
}

impl Readiness {
    async fn check<S: Queries>(state: &crate::AppState<S>) -> Readiness {
        let writer = match state.stats.writer.state() {
            WriterState::Running => "running",
            WriterState::Reloading => "reloading",
            WriterState::Stopped => "stopped",
            WriterState::Follower => "follower",
        };
        let role = state.cluster.as_ref().map(|cluster| cluster.role.borrow().clone());
        let store = state.store.reachable().await.map_err(|error| error.to_string());
        Readiness { writer, role, store, bus: bus_reachable(state).await }
    }

    /// Writes are taken: by this instance's writer, or by a follower that knows the writer.
    fn ready(&self) -> bool {
        let writes = match self.writer {
            "running" => true,
            "follower" => matches!(self.role, Some(Role::Follower { writer: Some(_) })),
            _ => false,
        };
        writes && self.store.is_ok() && self.bus.is_ok()
    }

    fn checks(&self) -> serde_json::Value {
        let outcome = |result: &Result<(), String>| match result {
            Ok(()) => serde_json::json!({ "status": "ok" }),
            Err(error) => serde_json::json!({ "status": "unavailable", "error": error }),
        };
        let mut writer = serde_json::json!({ "status": self.writer });
        if let Some(role) = &self.role {
            writer["cluster"] = serde_json::to_value(role).expect("a role serializes");
        }
        serde_json::json!({
            "writer": writer,
            "store": outcome(&self.store),
            "bus": outcome(&self.bus),
        })
    }
}

/// Asks the bus something it can only answer if it is reachable (a consumer group's lag).
async fn bus_reachable<S: Queries>(state: &crate::AppState<S>) -> Result<(), String> {
    let Some(probe) = &state.lag else { return Ok(()) };
    match tokio::time::timeout(BUS_PROBE_TIMEOUT, probe.lag(Projection::ReadModel.group())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {} ms", BUS_PROBE_TIMEOUT.as_millis())),
    }
}

fn answer(ready: bool, body: serde_json::Value) -> Response {
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

/// Ready to take writes: 200, or 503 with the failing checks.
pub(crate) async fn ready<S: Queries>(State(state): Shared<S>) -> Response {
    let readiness = Readiness::check(&state).await;
    let status = if readiness.ready() { "ready" } else { "unavailable" };
    answer(readiness.ready(), serde_json::json!({ "status": status, "checks": readiness.checks() }))
}

/// The original service's health check, now truthful: `{"status": "ok"}` only when ready.
pub(crate) async fn health<S: Queries>(State(state): Shared<S>) -> Response {
    let readiness = Readiness::check(&state).await;
    let status = if readiness.ready() { "ok" } else { "unavailable" };
    answer(readiness.ready(), serde_json::json!({ "status": status, "checks": readiness.checks() }))
}

/// The bus as the original service reported it (`status`, `producer.connected`, `kafka.status`),
/// from a real probe of the bus and the relay's publish failures.
pub(crate) async fn bus_health<S: Queries>(State(state): Shared<S>) -> Response {
    let failures = state.stats.relay.publish_failures.load(Relaxed);
    let reachable = bus_reachable(&state).await;
    let connected = reachable.is_ok();
    answer(
        connected,
        serde_json::json!({
            "status": if connected { "healthy" } else { "unhealthy" },
            "bus": state.bus_name,
            "producer": { "connected": connected, "publishFailures": failures },
            "kafka": { "status": if connected { "connected" } else { "disconnected" } },
            "timestamp": timestamp(&state),
            "error": reachable.err(),
        }),
    )
}

/// The state's time as the original service stamped its health answers: RFC 3339.
fn timestamp<S>(state: &crate::AppState<S>) -> String {
    crate::wire::time(state.now())
}

/// The pipeline's figures, with the original service's `status` and `timestamp` beside them.
pub(crate) async fn bus_stats<S: Queries>(State(state): Shared<S>) -> Result<Json<serde_json::Value>, Problem> {
    let (backlog, oldest) = state.store.outbox_backlog().await.map_err(store_problem)?;
    let connected = bus_reachable(&state).await.is_ok();
    let now = state.now().unix_micros();
    let oldest_age_ms = oldest.map(|at| now.saturating_sub(at.unix_micros()) / 1_000);
    let mut consumers = serde_json::Map::new();
    let mut dead_lettered = 0;
    for projection in Projection::ALL {
        let stats = state.stats.projector(projection);
        dead_lettered += stats.dead_lettered.load(Relaxed);
        let lag = match &state.lag {
            Some(probe) => probe.lag(projection.group()).await.ok(),
            None => None,
        };
        consumers.insert(
            projection.group().to_owned(),
            serde_json::json!({
                "projected": stats.projected.load(Relaxed),
                "duplicatesSkipped": stats.duplicates.load(Relaxed),
                "heldForGaps": stats.held.load(Relaxed),
                "deadLettered": stats.dead_lettered.load(Relaxed),
                "lag": lag,
            }),
        );
    }
    Ok(Json(serde_json::json!({
        "status": if connected { "healthy" } else { "unhealthy" },
        "timestamp": timestamp(&state),
        "producer": { "connected": connected },
        "kafka": { "status": if connected { "connected" } else { "disconnected" } },
        "outbox": { "backlog": backlog, "oldestUnpublishedAgeMs": oldest_age_ms },
        "relay": {
            "published": state.stats.relay.published.load(Relaxed),
            "publishFailures": state.stats.relay.publish_failures.load(Relaxed),
            "lastAckLatencyUs": state.stats.relay.last_ack_latency_us.load(Relaxed),
        },
        "consumers": consumers,
        "dlq": { "count": dead_lettered },
        "cluster": state.cluster.as_ref().map(|cluster| {
            serde_json::json!({ "node": cluster.node, "role": &*cluster.role.borrow() })
        }),
    })))
}

/// The process's Prometheus recorder, installed on first use.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Latencies are histograms with fixed buckets (not summaries), so a scraper can subtract
        // two scrapes and read the percentiles of exactly the interval between them.
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (an embedding application's): then this
        // endpoint shows only what the scrape itself sets.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Installs the metrics recorder; `serve` calls it before the pipeline starts so nothing is missed.
pub fn install_metrics() {
    recorder();
}

/// `GET /metrics`: Prometheus text format, with the outbox backlog read at scrape time.
pub(crate) async fn prometheus<S: Queries>(State(state): Shared<S>) -> Response {
    if let Ok((backlog, oldest)) = state.store.outbox_backlog().await {
        metrics::gauge!("wallex_outbox_backlog").set(backlog as f64);
        let now = state.now().unix_micros();
        let age_us = oldest.map_or(0, |at| now.saturating_sub(at.unix_micros()));
        metrics::gauge!("wallex_outbox_oldest_age_seconds").set(age_us as f64 / 1e6);
    }
    let mut response = recorder().render().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE));
    response
}
