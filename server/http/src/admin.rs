//! Administration (`admin` scope, a key bound to no owner): API keys (`/admin/keys`: list, create,
//! revoke) and the audit trail (`/admin/audit`). A key's secret appears once, in the answer that
//! creates it; every other answer shows its id alone.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use wallex_engine::OwnerId;
use wallex_pipeline::ports::{ApiKey, AuditRecord, Scope};

use crate::access::{Caller, Keys, audit, record, request_id};
use crate::extract::{Body, Params, PathId, page_size, parse_expiry};
use crate::problem::{ProblemJson, store_problem};
use crate::wire::time;
use crate::{AppState, Problem, Queries, Shared};

/// An API key as the API shows it: never its secret, nor the secret's digest.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KeyJson {
    id: String,
    name: Option<String>,
    /// `read`, `write`, `mint`, `admin`.
    scopes: Vec<String>,
    owner_id: Option<String>,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    first_used_at: Option<String>,
}

impl KeyJson {
    fn of(key: &ApiKey) -> KeyJson {
        KeyJson {
            id: key.id.clone(),
            name: key.name.clone(),
            scopes: key.scopes.iter().map(|scope| scope.name().to_owned()).collect(),
            owner_id: key.owner_id.map(|owner| owner.as_str().to_owned()),
            created_at: time(key.created_at),
            expires_at: key.expires_at.map(time),
            revoked_at: key.revoked_at.map(time),
            first_used_at: key.first_used_at.map(time),
        }
    }
}

/// A key just created, with its secret: the only answer that ever holds it.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewKeyJson {
    #[serde(flatten)]
    key: KeyJson,
    /// Send it as `Authorization: Bearer <secret>`. Shown once: the server keeps only its digest.
    secret: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateKeyBody {
    /// At least one of `read`, `write`, `mint`, `admin`.
    scopes: Vec<String>,
    /// The only owner whose wallets the key sees and moves.
    owner_id: Option<String>,
    #[schema(max_length = 128)]
    name: Option<String>,
    /// RFC 3339; the key stops working then.
    expires_at: Option<String>,
}

/// The longest key name.
const MAX_KEY_NAME: usize = 128;

fn keys_of<S>(state: &AppState<S>) -> Result<&dyn Keys, Problem> {
    state
        .access
        .keys()
        .map(|keys| keys.as_ref())
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "no_key_store", "this server keeps no API keys"))
}

#[utoipa::path(get, path = "/admin/keys",
    responses((status = 200, description = "Every API key, by id (no secrets)", body = Vec<KeyJson>)))]
pub(crate) async fn list_keys<S: Queries>(State(state): Shared<S>) -> Result<Json<Vec<KeyJson>>, Problem> {
    let keys = keys_of(&state)?.api_keys().await.map_err(store_problem)?;
    Ok(Json(keys.iter().map(KeyJson::of).collect()))
}

#[utoipa::path(post, path = "/admin/keys", request_body = CreateKeyBody,
    responses((status = 201, description = "Created: the key and its secret, shown this once", body = NewKeyJson),
        (status = 400, description = "invalid_scope, invalid_id, invalid_name or invalid_expiry", body = ProblemJson),
        (status = 422, description = "invalid_expiry: an instant before 1970", body = ProblemJson)))]
pub(crate) async fn create_key<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    Body(body): Body<CreateKeyBody>,
) -> Result<Response, Problem> {
    let keys = keys_of(&state)?;
    let invalid = |code, detail: String| Problem::new(StatusCode::BAD_REQUEST, code, detail);
    let scopes = body
        .scopes
        .iter()
        .map(|name| {
            Scope::parse(name)
                .ok_or_else(|| invalid("invalid_scope", format!("no scope {name:?}: read, write, mint or admin")))
        })
        .collect::<Result<Vec<Scope>, Problem>>()?;
    if scopes.is_empty() {
        return Err(invalid("invalid_scope", "a key needs at least one scope".to_owned()));
    }
    let owner_id =
        body.owner_id.as_deref().map(OwnerId::parse).transpose().map_err(|e| Problem::field("ownerId", &e))?;
    if let Some(name) = &body.name
        && (name.is_empty() || name.chars().count() > MAX_KEY_NAME || name.chars().any(char::is_control))
    {
        return Err(invalid("invalid_name", format!("name is 1 to {MAX_KEY_NAME} characters, no control characters")));
    }
    let expires_at = parse_expiry(body.expires_at.as_deref())?;
    let now = state.now();
    let made = crate::auth::new_key(scopes, owner_id, body.name.clone(), expires_at, now).map_err(|error| {
        tracing::error!(%error, "no randomness for a key");
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no key can be made right now")
    })?;
    keys.create_key(&made.key).await.map_err(store_problem)?;
    state.access.enforce();
    let request_id = request_id(&headers);
    let detail = Some(format!("scopes {}", Scope::list(&made.key.scopes)));
    audit(keys, record(now, caller.key_id(), "key_created", Some(&made.key.id), request_id, detail)).await;
    let body = NewKeyJson { key: KeyJson::of(&made.key), secret: made.secret };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[utoipa::path(post, path = "/admin/keys/{id}/revoke", params(("id" = String, Path)),
    responses((status = 200, description = "The key, revoked (now or before): within a second no instance accepts it", body = KeyJson),
        (status = 404, description = "key_not_found", body = ProblemJson)))]
pub(crate) async fn revoke_key<S: Queries>(
    State(state): Shared<S>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    PathId(id): PathId,
) -> Result<Json<KeyJson>, Problem> {
    let keys = keys_of(&state)?;
    let not_found = || Problem::new(StatusCode::NOT_FOUND, "key_not_found", "no API key with this id");
    if id.len() > 64 {
        return Err(not_found());
    }
    let now = state.now();
    if keys.revoke_key(&id, now).await.map_err(store_problem)? {
        state.access.forget(&id);
        let request_id = request_id(&headers);
        audit(keys, record(now, caller.key_id(), "key_revoked", Some(&id), request_id, None)).await;
    }
    let key = keys.api_key(&id).await.map_err(store_problem)?.ok_or_else(not_found)?;
    Ok(Json(KeyJson::of(&key)))
}

/// One audit record.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuditJson {
    /// The record's position in the trail; `before` pages by it.
    id: String,
    at: String,
    /// The acting key's id; null for the command line and development mode.
    actor: Option<String>,
    /// `key_created`, `key_revoked`, `key_first_used` or `admin_request`.
    action: String,
    target: Option<String>,
    request_id: Option<String>,
    detail: Option<String>,
}

impl AuditJson {
    fn of(record: &AuditRecord) -> AuditJson {
        AuditJson {
            id: record.id.to_string(),
            at: time(record.at),
            actor: record.actor.clone(),
            action: record.action.clone(),
            target: record.target.clone(),
            request_id: record.request_id.clone(),
            detail: record.detail.clone(),
        }
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct AuditQuery {
    /// Records older than this id (the `Link` header's next page).
    #[param(minimum = 0)]
    before: Option<u64>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/admin/audit", params(AuditQuery),
    responses((status = 200, description = "The audit trail, newest first", body = Vec<AuditJson>,
        headers(("link" = String, description = "RFC 8288: `<…>; rel=\"next\"` when there may be more")))))]
pub(crate) async fn audit_trail<S: Queries>(
    State(state): Shared<S>,
    Params(query): Params<AuditQuery>,
) -> Result<Response, Problem> {
    let keys = keys_of(&state)?;
    let limit = page_size(query.limit)?;
    let records = keys.audit_records(query.before, limit).await.map_err(store_problem)?;
    let next = (records.len() == limit).then(|| records.last().map(|last| last.id)).flatten();
    let mut response = Json(records.iter().map(AuditJson::of).collect::<Vec<_>>()).into_response();
    if let Some(before) = next {
        let link = format!("</admin/audit?before={before}&limit={limit}>; rel=\"next\"");
        response.headers_mut().insert(header::LINK, HeaderValue::from_str(&link).expect("ASCII"));
    }
    Ok(response)
}
