//! The OpenAPI document (`ApiDoc`), assembled from the routes' annotations, and `/openapi.json`.

use axum::Json;

// utoipa tags each operation with the module path it is named by in `paths(...)`; naming the
// handlers' generated path types directly keeps the operations untagged, as published.
use crate::holds::{__path_capture_hold, __path_get_hold, __path_place_hold, __path_void_hold};
use crate::ledger::{__path_balance_at, __path_ledger, __path_wallet_events};
use crate::problem::ProblemJson;
use crate::wallets::{
    __path_create_wallet, __path_credit, __path_debit, __path_get_wallet, __path_list_wallets, __path_transfer,
};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "Wallex", description = "An exact, event-sourced wallet ledger. Amounts are decimal strings."),
    paths(
        create_wallet,
        list_wallets,
        get_wallet,
        credit,
        debit,
        transfer,
        place_hold,
        wallet_events,
        balance_at,
        get_hold,
        capture_hold,
        void_hold,
        ledger
    ),
    components(schemas(ProblemJson))
)]
pub(crate) struct ApiDoc;

/// `GET /openapi.json`.
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}
