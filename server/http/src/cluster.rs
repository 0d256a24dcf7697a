//! Several instances, one writer: a follower forwards what only the writer can answer.
//!
//! Every instance of a cluster serves the whole API. One holds the writer lease (see
//! `wallex_pipeline::seat`); on the others, [`forward`] relays to it, with the caller's own
//! headers (its credentials and `Idempotency-Key`, so the writer authenticates, limits and
//! deduplicates exactly as if called directly), every request but the reads any instance answers
//! as well: eventual reads (`?consistency=eventual`) and searches not pinned to a position
//! (`GET /wallets`, `GET /ledger/transactions` without `after`), which read the shared read model.
//! Writes, and the strong reads that depend on the writer's committed view (a wallet, a hold, a
//! history), go to the writer.
//!
//! While no writer is known (a takeover is under way) a follower answers 503 `no_writer` with
//! `Retry-After`: nothing was done. A request whose forwarding failed after it was sent answers
//! 503 `unavailable` (outcome unknown: retry with the same key, on any instance). A forwarded
//! request that reaches an instance which is not the writer either (the lease moved in between)
//! is refused rather than forwarded again, so nothing loops.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use wallex_pipeline::{Holder, Role};

use crate::{Problem, Queries, Shared};

/// Marks a request one instance forwarded to another; its value is the forwarding node's id.
pub const FORWARDED: &str = "wallex-forwarded";

/// Names the node that answered a forwarded request, on the answer the follower relays.
pub const SERVED_BY: &str = "wallex-served-by";

/// What an instance needs to take part in a cluster: its role as it changes, and a client for
/// the writer.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub(crate) node: String,
    pub(crate) role: watch::Receiver<Role>,
    client: reqwest::Client,
}

impl Cluster {
    /// Forwarded requests time out after `timeout` (the API's own request timeout).
    pub fn new(node: String, role: watch::Receiver<Role>, timeout: std::time::Duration) -> Cluster {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(std::time::Duration::from_secs(1))
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("a client without TLS settings builds");
        Cluster { node, role, client }
    }

    /// The writer this instance forwards to now: `Ok(None)` when it is the writer itself,
    /// `Err(())` while no writer is known.
    fn writer(&self) -> Result<Option<Holder>, ()> {
        match &*self.role.borrow() {
            Role::Writer { .. } => Ok(None),
            Role::Follower { writer: Some(holder) } if !holder.address.is_empty() => Ok(Some(holder.clone())),
            Role::Follower { .. } => Err(()),
        }
    }
}

/// Whether any instance may answer this request from the shared read model.
fn answered_anywhere(method: &Method, path: &str, query: Option<&str>) -> bool {
    if method != Method::GET {
        return false;
    }
    let pairs: Vec<(String, String)> =
        query.and_then(|query| serde_urlencoded::from_str(query).ok()).unwrap_or_default();
    let has = |name: &str, value: Option<&str>| {
        pairs.iter().any(|(key, found)| key == name && value.is_none_or(|value| found == value))
    };
    if has("consistency", Some("eventual")) {
        return true;
    }
    matches!(path, "/wallets" | "/ledger/transactions") && !has("after", None)
}

/// Headers that belong to one connection, not to the request: never relayed.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

fn no_writer() -> Problem {
    metrics::counter!("wallex_forward_refused_total", "reason" => "no_writer").increment(1);
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no_writer",
        "no instance holds the writer lease right now (a takeover is under way); nothing was done: retry shortly",
    )
}

/// A forwarded request whose answer did not come back: it may have been decided.
fn outcome_unknown(what: &str) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        format!("{what}; the outcome is unknown: retry with the same Idempotency-Key"),
    )
}

/// The middleware: on a follower, relays the request to the writer and its answer back.
pub(crate) async fn forward<S: Queries>(State(state): Shared<S>, request: Request, next: Next) -> Response {
    let Some(cluster) = &state.cluster else { return next.run(request).await };
    // The writer answers everything itself: decided before anything of the request is read.
    let writer = cluster.writer();
    if matches!(writer, Ok(None)) || answered_anywhere(request.method(), request.uri().path(), request.uri().query()) {
        return next.run(request).await;
    }
    let Ok(Some(writer)) = writer else { return no_writer().into_response() };
    if request.headers().contains_key(FORWARDED) {
        // Forwarded by an instance that took this one for the writer: the lease has moved.
        return no_writer().into_response();
    }
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, crate::batch::MAX_BATCH_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is too large")
                .into_response();
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    let url = format!("{}{}", writer.address.trim_end_matches('/'), path);
    let mut headers = HeaderMap::with_capacity(parts.headers.len() + 1);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    if let Ok(node) = HeaderValue::from_str(&cluster.node) {
        headers.insert(FORWARDED, node);
    }
    let sent = cluster.client.request(parts.method.clone(), &url).headers(headers).body(body).send().await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(error) if error.is_connect() => {
            // Nothing reached the writer: nothing was done.
            tracing::warn!(%error, writer = %writer.node, "the writer cannot be reached");
            metrics::counter!("wallex_forward_refused_total", "reason" => "unreachable").increment(1);
            return Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_writer",
                "the instance holding the writer lease cannot be reached; nothing was done: retry shortly",
            )
            .into_response();
        }
        Err(error) => {
            tracing::warn!(%error, writer = %writer.node, "a forwarded request failed");
            metrics::counter!("wallex_forward_refused_total", "reason" => "failed").increment(1);
            return outcome_unknown("the writer did not answer").into_response();
        }
    };
    metrics::counter!("wallex_forwarded_total").increment(1);
    relay(answer, &writer).await
}

/// The writer's answer, as the follower sends it on.
async fn relay(answer: reqwest::Response, writer: &Holder) -> Response {
    let status = answer.status();
    let mut headers = HeaderMap::with_capacity(answer.headers().len() + 1);
    for (name, value) in answer.headers() {
        if !hop_by_hop(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(error) => {
            tracing::warn!(%error, writer = %writer.node, "the writer's answer was cut off");
            return outcome_unknown("the writer's answer was cut off").into_response();
        }
    };
    if let Ok(node) = HeaderValue::from_str(&writer.node) {
        headers.insert(SERVED_BY, node);
    }
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    if !response.headers().contains_key(header::CONTENT_TYPE) {
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reads_of_the_shared_read_model_stay_on_a_follower() {
        assert!(answered_anywhere(&Method::GET, "/wallets", Some("ownerId=o")));
        assert!(answered_anywhere(&Method::GET, "/ledger/transactions", None));
        assert!(answered_anywhere(&Method::GET, "/wallets/w", Some("consistency=eventual")));
        assert!(!answered_anywhere(&Method::GET, "/wallets/w", None), "a strong read needs the committed view");
        assert!(!answered_anywhere(&Method::GET, "/wallets/w", Some("consistency=strong")));
        assert!(!answered_anywhere(&Method::GET, "/ledger/transactions", Some("after=12")), "pinned to a position");
        assert!(!answered_anywhere(&Method::GET, "/holds/h", None));
        assert!(!answered_anywhere(&Method::POST, "/wallets", Some("consistency=eventual")), "a write");
    }
}
