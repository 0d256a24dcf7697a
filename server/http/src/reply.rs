//! A command's outcome as an HTTP answer, shared by every POST route: the status, the body, the
//! `Idempotent-Replayed` header, and the problems for a refused, conflicting or unconfirmed command.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use wallex_engine::Event;
use wallex_pipeline::Reply;

use crate::Problem;

/// The HTTP answer to a writer reply. A replay renders exactly as the original did.
pub(crate) fn respond(reply: Reply, created: bool, render: impl FnOnce(&[Event]) -> serde_json::Value) -> Response {
    match reply {
        Reply::Decided { record, events, replayed } => {
            let mut response = match record.result {
                Ok(()) => {
                    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
                    (status, Json(render(&events))).into_response()
                }
                Err(rejection) => {
                    let mut problem = Problem::rejection(rejection);
                    problem.transaction_id = Some(record.transaction_id.0);
                    problem.into_response()
                }
            };
            if replayed {
                response.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            // The command's commit position: a list read with `?after=` it reflects this write.
            response.headers_mut().insert(crate::POSITION, HeaderValue::from(record.transaction_id.0));
            response
        }
        Reply::KeyReused { .. } => Problem::rejection(wallex_engine::Rejection::IdempotencyKeyReused).into_response(),
        Reply::InFlight => Problem::new(
            StatusCode::CONFLICT,
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being processed",
        )
        .into_response(),
        Reply::Unavailable(reason) => {
            tracing::warn!(%reason, "command not applied");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "not applied: the ledger could not make it durable right now; retry with the same Idempotency-Key",
            )
            .into_response()
        }
        Reply::Unconfirmed { record, reason } => {
            tracing::warn!(%reason, transaction = %record.transaction_id, "original answer not read back");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "outcome_unconfirmed",
                "this request was decided before, but its answer cannot be read right now; retry with the same \
                 Idempotency-Key for it",
            )
            .into_response()
        }
    }
}
