//! The web console at `/`: one page (HTML, vanilla JavaScript, CSS and uPlot for the charts,
//! all embedded in the binary: no internet, no build step) over the daemon's own APIs.
//!
//! - `GET /`, `GET /console/{file}`: the page and its assets;
//! - `GET /api/live`: server-sent events, one stream per open tab: `status` (the `/status`
//!   document, every second), `scores` (each sample's values per label, thresholds and the
//!   labels matching), `event` (each start and end), `lagged` (points this tab missed);
//! - `GET /api/timeline`: the score points kept for the timelines (see [`live`]);
//! - with the sample history on: `GET /api/events[?pipeline=][&label=][&since=][&until=][&limit=]`
//!   (matches newest first, with their latest review mark), `GET /api/events/{id}/snapshot`,
//!   `GET /api/events/{id}/context` (the samples around it with their scores),
//!   `GET /api/pipelines/{name}/thumbnail` (the latest inferred sample's thumbnail); searches,
//!   backtests and reviews are `crate::daemon::history_api`'s;
//! - `GET /api/labels`: each pipeline's label set; `POST /api/labels/{pipeline}/check` with
//!   label-set TOML: the problems `clipfilterd check` reports (line, column, field, message);
//!   `PUT /api/labels/{pipeline}`: checks, then writes the pipeline's label file (only the files
//!   the configuration names can be written), which the element reloads as it does any change.
//!
//! Who may call them: [`auth`].

pub mod auth;
pub mod live;

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use crate::daemon::check::check_labels;
use crate::daemon::config::{LabelSource, PipelineConfig};
use crate::daemon::http::StatusFn;
use crate::history::events::{self, EventFilter};
use crate::history::{History, query};
use live::Live;

/// How often an open tab gets the status.
const STATUS_PERIOD: Duration = Duration::from_secs(1);
/// Events listed at most.
const MAX_EVENTS: usize = 1000;
/// Around an event, the samples shown: from this long before its start...
const CONTEXT_BEFORE_MS: i64 = 15_000;
/// ...to this long after.
const CONTEXT_AFTER_MS: i64 = 45_000;
/// Samples of an event's context at most.
const CONTEXT_SAMPLES: usize = 600;

const INDEX: &str = include_str!("assets/index.html");
const ASSETS: [(&str, &str, &str); 5] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("assets/app.css"),
    ),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_str!("assets/uPlot.min.css"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_str!("assets/uPlot.LICENSE"),
    ),
];

/// The current pipelines' configurations (a reload changes them).
pub type PipelinesFn = dyn Fn() -> Vec<PipelineConfig> + Send + Sync;

/// What the console's handlers read.
pub struct ConsoleApi {
    pub live: Arc<Live>,
    /// The sample history's folder, when it is on.
    pub history: Option<PathBuf>,
    pub status: Arc<StatusFn>,
    pub pipelines: Box<PipelinesFn>,
}

impl std::fmt::Debug for ConsoleApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleApi")
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

type Params = HashMap<String, String>;

/// An answer's error: status and message.
struct Failure(StatusCode, serde_json::Value);

impl Failure {
    fn bad(message: impl Into<String>) -> Failure {
        Failure(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": message.into() }),
        )
    }

    fn not_found(message: impl Into<String>) -> Failure {
        Failure(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": message.into() }),
        )
    }
}

impl From<crate::error::Error> for Failure {
    fn from(e: crate::error::Error) -> Failure {
        let status = if e.is_user_error() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Failure(status, serde_json::json!({ "error": format!("{e:#}") }))
    }
}

impl From<clipfilter::Error> for Failure {
    fn from(e: clipfilter::Error) -> Failure {
        crate::error::Error::from(e).into()
    }
}

/// Runs `work` on a blocking thread.
async fn blocking(work: impl FnOnce() -> Result<Response, Failure> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(r)) => r,
        Ok(Err(Failure(status, body))) => (status, axum::Json(body)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({ "error": format!("handler failed: {e}") })),
        )
            .into_response(),
    }
}

/// The problems of a label set as the page lists them: line, column, field and message each.
pub fn problems_json(e: &clipfilter::Error) -> Vec<serde_json::Value> {
    match e {
        clipfilter::Error::Problems(list) => list.iter().flat_map(problems_json).collect(),
        clipfilter::Error::Config {
            location, message, ..
        } => vec![serde_json::json!({
            "line": location.line,
            "column": location.column,
            "field": location.field,
            "message": message,
            "text": e.to_string(),
        })],
        other => vec![serde_json::json!({
            "line": null, "column": null, "field": null,
            "message": other.to_string(),
            "text": other.to_string(),
        })],
    }
}

impl ConsoleApi {
    fn history(&self) -> Result<History, Failure> {
        match &self.history {
            Some(dir) => Ok(History::open(dir)?),
            None => Err(Failure::not_found(
                "the sample history is off ([history] enabled = false)",
            )),
        }
    }

    /// The label file of pipeline `name` (the one its configuration names).
    fn label_file(&self, name: &str) -> Result<(PipelineConfig, PathBuf), Failure> {
        let pipeline = (self.pipelines)()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Failure::not_found(format!("no pipeline {name}")))?;
        match &pipeline.labels {
            LabelSource::File(f) => {
                let f = f.clone();
                Ok((pipeline, f))
            }
            LabelSource::Prompts(_) => Err(Failure::bad(format!(
                "pipeline {name} has inline `prompts` in the configuration, not a label file"
            ))),
        }
    }

    fn labels_json(&self) -> serde_json::Value {
        let list: Vec<serde_json::Value> = (self.pipelines)()
            .iter()
            .map(|p| match &p.labels {
                LabelSource::File(f) => {
                    let (text, error) = match clipfilter::input::read_to_string(f) {
                        Ok(t) => (Some(t), None),
                        Err(e) => (None, Some(e.to_string())),
                    };
                    serde_json::json!({
                        "pipeline": p.name,
                        "file": f.display().to_string(),
                        "text": text,
                        "error": error,
                    })
                }
                LabelSource::Prompts(prompts) => serde_json::json!({
                    "pipeline": p.name,
                    "prompts": prompts,
                }),
            })
            .collect();
        serde_json::json!({ "pipelines": list })
    }

    /// Checks `body` as pipeline `name`'s label set: `Ok(set summary)` or the problems.
    fn check(
        &self,
        name: &str,
        body: &Bytes,
    ) -> Result<(PathBuf, String, Result<String, clipfilter::Error>), Failure> {
        let (pipeline, file) = self.label_file(name)?;
        let text = std::str::from_utf8(body)
            .map_err(|_| Failure::bad("the label set is not UTF-8 text"))?
            .to_owned();
        let checked = check_labels(&pipeline, &file, &text).map(|set| {
            let negatives = set.labels.iter().filter(|l| l.negative).count();
            format!(
                "label set, {} labels ({negatives} negative)",
                set.labels.len()
            )
        });
        Ok((file, text, checked))
    }
}

fn json(value: serde_json::Value) -> Response {
    axum::Json(value).into_response()
}

fn jpeg(bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

fn when(p: &Params, key: &str) -> Result<Option<i64>, Failure> {
    Ok(query::parse_when(
        key,
        p.get(key).map(String::as_str).filter(|s| !s.is_empty()),
        crate::history::record::now_ms(),
    )?)
}

fn not_empty(p: &Params, key: &str) -> Option<String> {
    p.get(key).filter(|v| !v.is_empty()).cloned()
}

/// One tab's stream: the status every [`STATUS_PERIOD`], and what [`Live`] sends.
fn live_stream(
    live: &Live,
    status: Arc<StatusFn>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + use<> {
    let rx = live.subscribe();
    let tick = tokio::time::interval(STATUS_PERIOD);
    futures_util::stream::unfold((rx, tick), move |(mut rx, mut tick)| {
        let status = status.clone();
        async move {
            let event = tokio::select! {
                _ = tick.tick() => SseEvent::default().event("status").data(status().to_string()),
                m = rx.recv() => match m {
                    Ok(m) => SseEvent::default().event(m.kind).data(&*m.data),
                    Err(RecvError::Lagged(n)) => SseEvent::default().event("lagged").data(n.to_string()),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((Ok(event), (rx, tick)))
        }
    })
}

/// The console's routes.
pub fn routes(api: Arc<ConsoleApi>) -> Router {
    let mut router = Router::new().route(
        "/",
        get(|| async {
            (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                INDEX,
            )
        }),
    );
    for (name, kind, body) in ASSETS {
        router = router.route(
            &format!("/console/{name}"),
            get(move || async move { ([(header::CONTENT_TYPE, kind)], body) }),
        );
    }
    let a = api.clone();
    router
        .route(
            "/api/live",
            get(move || {
                let stream = live_stream(&a.live, a.status.clone());
                async move { Sse::new(stream).keep_alive(KeepAlive::default()) }
            }),
        )
        .route(
            "/api/timeline",
            get({
                let api = api.clone();
                move || {
                    let points = api.live.timeline();
                    async move {
                        // The points are JSON texts already.
                        let body = format!(
                            "{{\"points\":[{}]}}",
                            points
                                .iter()
                                .map(|p| &**p)
                                .collect::<Vec<&str>>()
                                .join(",")
                        );
                        ([(header::CONTENT_TYPE, "application/json")], body)
                    }
                }
            }),
        )
        .route(
            "/api/events",
            get({
                let api = api.clone();
                move |Query(p): Query<Params>| {
                    let api = api.clone();
                    blocking(move || {
                        let limit = match p.get("limit") {
                            Some(l) => l
                                .parse::<usize>()
                                .ok()
                                .filter(|n| (1..=MAX_EVENTS).contains(n))
                                .ok_or_else(|| {
                                    Failure::bad(format!(
                                        "limit `{l}`: expected 1 to {MAX_EVENTS}"
                                    ))
                                })?,
                            None => 200,
                        };
                        let filter = EventFilter {
                            pipeline: not_empty(&p, "pipeline"),
                            label: not_empty(&p, "label"),
                            since_ms: when(&p, "since")?,
                            until_ms: when(&p, "until")?,
                            limit,
                        };
                        let list = events::list(&api.history()?, &filter)?;
                        Ok(json(serde_json::json!({ "events": list })))
                    })
                }
            }),
        )
        .route(
            "/api/events/{id}/snapshot",
            get({
                let api = api.clone();
                move |UrlPath(id): UrlPath<String>| {
                    let api = api.clone();
                    blocking(move || {
                        let path = match api.live.snapshot(&id) {
                            Some(p) => p,
                            None => events::snapshot(&api.history()?, &id)?
                                .map(PathBuf::from)
                                .ok_or_else(|| Failure::not_found("no snapshot for this event"))?,
                        };
                        let bytes = clipfilter::input::read(&path).map_err(|_| {
                            Failure::not_found("the snapshot is gone (deleted by its limits)")
                        })?;
                        Ok(jpeg(bytes))
                    })
                }
            }),
        )
        .route(
            "/api/events/{id}/context",
            get({
                let api = api.clone();
                move |UrlPath(id): UrlPath<String>| {
                    let api = api.clone();
                    blocking(move || {
                        let history = api.history()?;
                        let (pipeline, t) = events::event_time(&history, &id)?
                            .ok_or_else(|| Failure::not_found(format!("no event {id}")))?;
                        let samples = events::samples(
                            &history,
                            &pipeline,
                            t - CONTEXT_BEFORE_MS,
                            t + CONTEXT_AFTER_MS,
                            CONTEXT_SAMPLES,
                        )?;
                        Ok(json(serde_json::json!({
                            "pipeline": pipeline,
                            "time_ms": t,
                            "samples": samples,
                        })))
                    })
                }
            }),
        )
        .route(
            "/api/pipelines/{name}/thumbnail",
            get({
                let api = api.clone();
                move |UrlPath(name): UrlPath<String>| {
                    let api = api.clone();
                    blocking(move || {
                        let history = api.history()?;
                        let jpeg_bytes = events::latest_thumbnail(&history, &name)?
                            .map(|id| history.thumbnail(id))
                            .transpose()?
                            .flatten()
                            .ok_or_else(|| Failure::not_found("no thumbnail yet"))?;
                        Ok(jpeg(jpeg_bytes))
                    })
                }
            }),
        )
        .route(
            "/api/labels",
            get({
                let api = api.clone();
                move || {
                    let api = api.clone();
                    blocking(move || Ok(json(api.labels_json())))
                }
            }),
        )
        .route(
            "/api/labels/{pipeline}/check",
            post({
                let api = api.clone();
                move |UrlPath(name): UrlPath<String>, body: Bytes| {
                    let api = api.clone();
                    blocking(move || {
                        let (file, _, checked) = api.check(&name, &body)?;
                        Ok(json(match checked {
                            Ok(summary) => serde_json::json!({
                                "ok": true, "file": file.display().to_string(), "summary": summary,
                            }),
                            Err(e) => serde_json::json!({
                                "ok": false, "file": file.display().to_string(),
                                "errors": problems_json(&e),
                            }),
                        }))
                    })
                }
            }),
        )
        .route(
            "/api/labels/{pipeline}",
            axum::routing::put(move |UrlPath(name): UrlPath<String>, body: Bytes| {
                let api = api.clone();
                blocking(move || {
                    let (file, text, checked) = api.check(&name, &body)?;
                    if let Err(e) = checked {
                        return Err(Failure(
                            StatusCode::BAD_REQUEST,
                            serde_json::json!({
                                "ok": false,
                                "error": e.to_string(),
                                "errors": problems_json(&e),
                            }),
                        ));
                    }
                    clipfilter::input::write_atomically(&file, &text, "console")?;
                    tracing::info!(pipeline = %name, labels = %file.display(), "label set saved from the console");
                    Ok(json(serde_json::json!({
                        "ok": true, "file": file.display().to_string(),
                    })))
                })
            }),
        )
}
