//! The daemon's HTTP listener (127.0.0.1:9464 by default), on axum.
//!
//! - `GET /metrics`: Prometheus scrape, OpenMetrics text ([`crate::daemon::metrics::CONTENT_TYPE`]).
//! - `GET /healthz`: `200 ok` when the health callback says healthy, else `503` with its reason.
//! - `GET /status`: the JSON document from the status callback.
//! - anything else: `404` (`405` for another method on a known path).
//!
//! Other parts of the daemon add their routes to the [`Router`] given to [`HttpServer::start`]
//! ([`core_routes`] are the three above). The server runs on its own thread with a small tokio
//! runtime: connections cost no thread each, and a handler that has real work to do runs it with
//! `tokio::task::spawn_blocking` so that the others stay responsive. Callbacks of the core routes
//! should be quick (read atomics or a snapshot, never wait on a pipeline).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::daemon::metrics::{CONTENT_TYPE, Metrics};
use crate::error::{Error, Result};

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// How long a stopping server waits for requests in progress (and long-lived streams) to end.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Threads for handlers' blocking work (searches, backtests), at most.
const BLOCKING_THREADS: usize = 4;

/// Health callback: `Ok(())` when healthy, else the reason (sent with status 503).
pub type HealthFn = dyn Fn() -> std::result::Result<(), String> + Send + Sync;
/// Status callback: the `/status` document.
pub type StatusFn = dyn Fn() -> serde_json::Value + Send + Sync;

const TEXT: &str = "text/plain; charset=utf-8";

/// `/metrics`, `/healthz` and `/status`.
pub fn core_routes(
    metrics: Arc<Metrics>,
    health: impl Fn() -> std::result::Result<(), String> + Send + Sync + 'static,
    status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
) -> Router {
    let health: Arc<HealthFn> = Arc::new(health);
    let status: Arc<StatusFn> = Arc::new(status);
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()) }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let health = Arc::clone(&health);
                async move {
                    match health() {
                        Ok(()) => (
                            StatusCode::OK,
                            [(header::CONTENT_TYPE, TEXT)],
                            "ok\n".into(),
                        ),
                        Err(reason) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [(header::CONTENT_TYPE, TEXT)],
                            format!("{reason}\n"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let status = Arc::clone(&status);
                async move {
                    let body = serde_json::to_string_pretty(&status())
                        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
                    ([(header::CONTENT_TYPE, "application/json")], body + "\n")
                }
            }),
        )
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, TEXT)],
        "not found\n",
    )
        .into_response()
}

/// A running HTTP listener. Stop it with [`HttpServer::shutdown`] (dropping it stops it too).
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Binds `addr` (such as `"127.0.0.1:9464"`; port 0 picks a free one) and serves `routes` on
    /// a thread named `http`.
    pub fn start(addr: &str, routes: Router) -> Result<HttpServer> {
        HttpServer::start_wrapped(addr, routes, |app| app)
    }

    /// [`HttpServer::start`], with `wrap` applied to the whole application, the answers to
    /// unknown paths and methods included (a layer every request goes through: the console's
    /// token and origin checks).
    pub fn start_wrapped(
        addr: &str,
        routes: Router,
        wrap: impl FnOnce(Router) -> Router,
    ) -> Result<HttpServer> {
        let bind_error = |message: String| Error::Bind {
            addr: addr.to_owned(),
            message,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("http-work")
            .build()
            .map_err(|e| bind_error(format!("cannot start the HTTP runtime: {e}")))?;
        // Bound here, not on the thread, so that a taken port is this call's error.
        let listener = std::net::TcpListener::bind(addr).map_err(|e| bind_error(e.to_string()))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| bind_error(e.to_string()))?;
        let bound = listener
            .local_addr()
            .map_err(|e| bind_error(e.to_string()))?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(listener).map_err(|e| bind_error(e.to_string()))?
        };
        let app = wrap(
            routes
                .fallback(not_found)
                .method_not_allowed_fallback(method_not_allowed),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let (graceful_tx, graceful_rx) = tokio::sync::oneshot::channel::<()>();
                    let server = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            let _ = graceful_rx.await;
                        })
                        .into_future();
                    tokio::pin!(server);
                    tokio::select! {
                        result = &mut server => {
                            if let Err(e) = result {
                                tracing::error!(error = %e, "HTTP server stopped");
                            }
                            return;
                        }
                        _ = stop_rx => {}
                    }
                    // Stop accepting, let requests in progress finish; streams that would
                    // never end are cut after the grace period.
                    let _ = graceful_tx.send(());
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
                });
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(|e| bind_error(format!("cannot start thread: {e}")))?;
        tracing::info!(addr = %bound, "HTTP listener ready (the console at /, /metrics, /healthz, /status)");
        Ok(HttpServer {
            addr: bound,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the thread (after the requests in progress, at most about a
    /// second).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the HTTP thread panicked");
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::CONTENT_TYPE, TEXT)],
        "method not allowed\n",
    )
        .into_response()
}
