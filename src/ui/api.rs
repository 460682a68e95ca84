//! The routes: the pages and their assets, the REST API (JSON, with the progress
//! reports' field names) and `/metrics`.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/` | the page listing the queries |
//! | GET | `/queries/{query}` | the page of one query (charts, reports, SQL, plan) |
//! | GET | `/api/queries` | every query: [`query_json`] without SQL and plan |
//! | GET | `/api/queries/{query}` | one query, with `sql` and `plan` |
//! | GET | `/api/queries/{query}/progress?limit=N` | its recent progress reports, oldest first |
//! | GET | `/api/queries/{query}/plan` | `{"name", "id", "runId", "sql", "plan"}` |
//! | POST | `/api/queries/{query}/stop` | stops it after its current batch, answers the query once ended |
//! | GET | `/metrics` | Prometheus text format |
//!
//! `{query}` is a run id, a query id or a query name (see [`QueryList::find`]).

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::{QueryList, TrackedQuery};
use crate::session::{query_state, state_rows};

const INDEX_HTML: &str = include_str!("assets/index.html");
const QUERY_HTML: &str = include_str!("assets/query.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const UPLOT_JS: &str = include_str!("assets/uplot/uPlot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uplot/uPlot.min.css");

/// The application: every route over the session's queries.
pub(super) fn router(queries: QueryList) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML) }))
        .route("/queries/{query}", get(|| async { page(QUERY_HTML) }))
        // No icon: answer the browser's request without a 404 in its console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/assets/app.js",
            get(|| async { asset(APP_JS, "text/javascript") }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset(STYLE_CSS, "text/css") }),
        )
        .route(
            "/assets/uPlot.iife.min.js",
            get(|| async { asset(UPLOT_JS, "text/javascript") }),
        )
        .route(
            "/assets/uPlot.min.css",
            get(|| async { asset(UPLOT_CSS, "text/css") }),
        )
        .route("/api/queries", get(list))
        .route("/api/queries/{query}", get(one))
        .route("/api/queries/{query}/progress", get(progress))
        .route("/api/queries/{query}/plan", get(plan))
        .route("/api/queries/{query}/stop", post(stop))
        .route("/metrics", get(metrics))
        .with_state(queries)
}

fn page(html: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A query's document: identity, state, status, failure, source tables and the latest
/// progress report (`null` before the first batch), as `DESCRIBE QUERY` shows it, plus
/// `stateRows` (numRowsTotal over the stateful operators) for the list page.
pub fn query_json(tracked: &TrackedQuery, with_text: bool) -> Value {
    let query = &tracked.query;
    let last = query.last_progress();
    let mut doc = json!({
        "name": query.name(),
        "id": query.id(),
        "runId": query.run_id(),
        "state": query_state(query),
        "status": query.status(),
        "exception": query.exception(),
        "sources": query.source_tables(),
        "stateRows": last.as_ref().and_then(state_rows),
        "lastProgress": last,
    });
    if with_text {
        doc["sql"] = json!(tracked.sql);
        doc["plan"] = json!(tracked.plan);
    }
    doc
}

fn not_found(key: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({
            "error": format!("no streaming query '{key}' (GET /api/queries lists them)")
        })),
    )
        .into_response()
}

async fn list(State(queries): State<QueryList>) -> Json<Value> {
    Json(Value::Array(
        queries
            .tracked()
            .iter()
            .map(|t| query_json(t, false))
            .collect(),
    ))
}

async fn one(State(queries): State<QueryList>, Path(key): Path<String>) -> Response {
    match queries.find(&key) {
        Some(tracked) => Json(query_json(&tracked, true)).into_response(),
        None => not_found(&key),
    }
}

async fn progress(
    State(queries): State<QueryList>,
    Path(key): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(tracked) = queries.find(&key) else {
        return not_found(&key);
    };
    let limit = match params.get("limit").map(|l| l.parse::<usize>()) {
        None => usize::MAX,
        Some(Ok(limit)) => limit,
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "limit must be a whole number of reports"})),
            )
                .into_response();
        }
    };
    let mut reports = tracked.query.recent_progress();
    let skip = reports.len().saturating_sub(limit);
    reports.drain(..skip);
    Json(json!(reports)).into_response()
}

async fn plan(State(queries): State<QueryList>, Path(key): Path<String>) -> Response {
    match queries.find(&key) {
        Some(tracked) => Json(json!({
            "name": tracked.query.name(),
            "id": tracked.query.id(),
            "runId": tracked.query.run_id(),
            "sql": tracked.sql,
            "plan": tracked.plan,
        }))
        .into_response(),
        None => not_found(&key),
    }
}

async fn stop(State(queries): State<QueryList>, Path(key): Path<String>) -> Response {
    let Some(tracked) = queries.find(&key) else {
        return not_found(&key);
    };
    if !tracked.query.is_active() {
        return (
            StatusCode::CONFLICT,
            Json(json!({
                "error": format!(
                    "streaming query '{}' is not running (it {})",
                    tracked.query.name(),
                    query_state(&tracked.query)
                )
            })),
        )
            .into_response();
    }
    tracing::info!(
        query = tracked.query.name(),
        "stop requested over the REST API"
    );
    tracked.query.stop();
    // A failure that ended the query is in the document's `exception`.
    let _ = tracked.query.await_termination().await;
    Json(query_json(&tracked, false)).into_response()
}

async fn metrics(State(queries): State<QueryList>) -> Response {
    let text = queries.metrics().render(&queries.tracked());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
