//! The sample history over HTTP, on the daemon's listener:
//!
//! - `GET /api/search?q=a+white+van[&since=24h][&until=...][&pipeline=NAME][&top=20][&min_score=0.25][&templates=ensemble7]`:
//!   ranked time ranges (JSON, as `clipfilterd search --json`); `POST /api/search?...` with an
//!   image as the body searches by example;
//! - `POST /api/backtest[?pipeline=NAME][&since=7d][&until=...]` with a label set (TOML) as the
//!   body: the episodes it would have produced next to the live ones (as `clipfilterd backtest
//!   --json`);
//! - `POST /api/review` with `{"sample": 123 | "event": "<uuid>", "label": "van", "verdict":
//!   "true_positive" | "false_positive", "note": "..."}`: stores a review mark (201 and the mark);
//!   `GET /api/reviews[?since=30d]`: the marks;
//! - `GET /api/thumbnail/{sample}`: a sample's JPEG thumbnail.
//!
//! Bad input answers 400 with `{"error": "..."}` (the message the command line prints), a
//! missing thumbnail 404, anything else 500. Searches and backtests run on the listener's
//! blocking threads, reading the history while the recorder writes it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::error::Error;
use crate::history::backtest::Window;
use crate::history::{History, query, review, time};
use clipfilter::engine::Engine;

/// The engine in use (it changes when the configuration names another model).
pub type EngineFn = dyn Fn() -> Arc<Engine> + Send + Sync;

/// What the handlers need.
pub struct HistoryApi {
    pub dir: PathBuf,
    pub engine: Box<EngineFn>,
}

impl std::fmt::Debug for HistoryApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryApi")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

type Params = HashMap<String, String>;

fn error(e: &Error) -> Response {
    let status = if e.is_user_error() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    let body = serde_json::json!({ "error": format!("{e:#}") });
    (status, axum::Json(body)).into_response()
}

fn thumbnail_url(id: i64) -> Option<String> {
    Some(format!("/api/thumbnail/{id}"))
}

/// Runs `work` on a blocking thread; its error becomes a JSON error answer.
async fn blocking(work: impl FnOnce() -> Result<Response, Error> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => error(&e),
        Err(e) => error(&Error::worker(format!("handler failed: {e}"))),
    }
}

fn search_request(p: &Params, image: Option<Bytes>) -> Result<query::SearchRequest, Error> {
    let top = match p.get("top") {
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| Error::invalid("top", format!("`{t}`: expected 1 to 1000")))?,
        None => 20,
    };
    let min_score = match p.get("min_score") {
        Some(m) => Some(
            m.parse::<f32>()
                .ok()
                .filter(|v| (-1.0..=1.0).contains(v))
                .ok_or_else(|| Error::invalid("min_score", format!("`{m}`: expected -1 to 1")))?,
        ),
        None => None,
    };
    Ok(query::SearchRequest {
        text: p.get("q").cloned(),
        image: image.map(|b| (b.to_vec(), PathBuf::from("request body"))),
        since: p.get("since").cloned(),
        until: p.get("until").cloned(),
        pipelines: p.get("pipeline").map(|n| vec![n.clone()]),
        top,
        min_score,
        templates: p.get("templates").cloned(),
    })
}

fn json(value: serde_json::Value) -> Response {
    axum::Json(value).into_response()
}

impl HistoryApi {
    fn history(&self) -> Result<History, Error> {
        History::open(&self.dir)
    }
}

/// The routes above.
pub fn routes(api: Arc<HistoryApi>) -> Router {
    let (a, b, c, d, e, f) = (
        api.clone(),
        api.clone(),
        api.clone(),
        api.clone(),
        api.clone(),
        api,
    );
    Router::new()
        .route(
            "/api/search",
            get(move |Query(p): Query<Params>| {
                let api = a.clone();
                blocking(move || {
                    let req = search_request(&p, None)?;
                    let found = query::search(&api.history()?, &(api.engine)(), &req)?;
                    Ok(json(query::found_json(&found, &thumbnail_url)))
                })
            })
            .post(move |Query(p): Query<Params>, body: Bytes| {
                let api = b.clone();
                blocking(move || {
                    if body.is_empty() {
                        return Err(Error::invalid("image", "the request body is empty"));
                    }
                    let req = search_request(&p, Some(body))?;
                    let found = query::search(&api.history()?, &(api.engine)(), &req)?;
                    Ok(json(query::found_json(&found, &thumbnail_url)))
                })
            }),
        )
        .route(
            "/api/backtest",
            post(move |Query(p): Query<Params>, body: Bytes| {
                let api = c.clone();
                blocking(move || {
                    let toml = std::str::from_utf8(&body)
                        .map_err(|_| Error::invalid("label set", "the body is not UTF-8 text"))?;
                    let now = crate::history::record::now_ms();
                    let window = Window {
                        pipelines: p.get("pipeline").map(|n| vec![n.clone()]),
                        since_ms: query::parse_when(
                            "since",
                            p.get("since").map(String::as_str),
                            now,
                        )?,
                        until_ms: query::parse_when(
                            "until",
                            p.get("until").map(String::as_str),
                            now,
                        )?,
                    };
                    let report = query::backtest(
                        &api.history()?,
                        &(api.engine)(),
                        toml,
                        Path::new("request body"),
                        &window,
                    )?;
                    Ok(json(query::report_json(&report, &thumbnail_url)))
                })
            }),
        )
        .route(
            "/api/review",
            post(move |body: Bytes| {
                let api = d.clone();
                blocking(move || {
                    let new: review::NewReview = serde_json::from_slice(&body)
                        .map_err(|e| Error::invalid("review", e.to_string()))?;
                    let mark = review::add(&api.dir, &new)?;
                    Ok((StatusCode::CREATED, axum::Json(mark)).into_response())
                })
            }),
        )
        .route(
            "/api/reviews",
            get(move |Query(p): Query<Params>| {
                let api = e.clone();
                blocking(move || {
                    let since = p
                        .get("since")
                        .map(|t| {
                            time::parse_time(t, crate::history::record::now_ms())
                                .map_err(|m| Error::invalid("since", m))
                        })
                        .transpose()?;
                    let marks = review::list(&api.history()?, since)?;
                    Ok(json(serde_json::json!({ "reviews": marks })))
                })
            }),
        )
        .route(
            "/api/thumbnail/{id}",
            get(move |UrlPath(id): UrlPath<i64>| {
                let api = f.clone();
                blocking(move || match api.history()?.thumbnail(id)? {
                    Some(jpeg) => {
                        Ok(([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response())
                    }
                    None => {
                        Ok((StatusCode::NOT_FOUND, "no thumbnail for this sample\n")
                            .into_response())
                    }
                })
            }),
        )
}
