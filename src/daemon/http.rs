//! The metrics and health HTTP server (127.0.0.1:9464 by default).
//!
//! - `GET /metrics`: Prometheus scrape, OpenMetrics text ([`crate::daemon::metrics::CONTENT_TYPE`]).
//! - `GET /healthz`: `200 ok` when the health callback says healthy, else `503` with its reason.
//! - `GET /status`: the JSON document from the status callback.
//! - anything else: `404` (`405` for another method on a known path).
//!
//! Requests are served one at a time on the server's own thread; callbacks should be quick (read
//! atomics or a snapshot, never wait on a pipeline).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use tiny_http::{Header, Method, Request, Response, Server};

use crate::daemon::metrics::{CONTENT_TYPE, Metrics};
use crate::error::{Error, Result};

/// Default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9464";

/// Health callback: `Ok(())` when healthy, else the reason (sent with status 503).
pub type HealthFn = dyn Fn() -> std::result::Result<(), String> + Send + Sync;
/// Status callback: the `/status` document.
pub type StatusFn = dyn Fn() -> serde_json::Value + Send + Sync;

/// A running metrics/health server. Stop it with [`HttpServer::shutdown`] (dropping it stops it too).
pub struct HttpServer {
    server: Arc<Server>,
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

struct Handlers {
    metrics: Arc<Metrics>,
    health: Box<HealthFn>,
    status: Box<StatusFn>,
}

impl HttpServer {
    /// Binds `addr` (such as `"127.0.0.1:9464"`; port 0 picks a free one) and serves on a thread
    /// named `http`.
    pub fn start(
        addr: &str,
        metrics: Arc<Metrics>,
        health: impl Fn() -> std::result::Result<(), String> + Send + Sync + 'static,
        status: impl Fn() -> serde_json::Value + Send + Sync + 'static,
    ) -> Result<HttpServer> {
        let server = Server::http(addr).map_err(|e| Error::Bind {
            addr: addr.to_owned(),
            message: e.to_string(),
        })?;
        let bound = server.server_addr().to_ip().ok_or_else(|| Error::Bind {
            addr: addr.to_owned(),
            message: "not an IP socket".into(),
        })?;
        let server = Arc::new(server);
        let stopping = Arc::new(AtomicBool::new(false));
        let handlers = Handlers {
            metrics,
            health: Box::new(health),
            status: Box::new(status),
        };
        let thread = {
            let server = Arc::clone(&server);
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name("http".into())
                .spawn(move || serve(&server, &stopping, &handlers))
                .map_err(|e| Error::Bind {
                    addr: addr.to_owned(),
                    message: format!("cannot start thread: {e}"),
                })?
        };
        tracing::info!(addr = %bound, "serving /metrics, /healthz and /status");
        Ok(HttpServer {
            server,
            addr: bound,
            stopping,
            thread: Some(thread),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the thread (after the request in progress, if any).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(server: &Server, stopping: &AtomicBool, handlers: &Handlers) {
    loop {
        match server.recv() {
            Ok(request) => {
                if let Err(e) = respond(request, handlers) {
                    tracing::debug!(error = %e, "HTTP response not sent");
                }
            }
            Err(e) => {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                tracing::warn!(error = %e, "HTTP server: cannot accept a connection");
            }
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    // Only called with constant, valid ASCII names and values.
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| unreachable!("invalid header {name}"))
}

fn respond(request: Request, handlers: &Handlers) -> std::io::Result<()> {
    let path = request
        .url()
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .to_owned();
    let known = matches!(path.as_str(), "/metrics" | "/healthz" | "/status");
    if known && *request.method() != Method::Get {
        let response = Response::from_string("method not allowed\n")
            .with_status_code(405)
            .with_header(header("Allow", "GET"));
        return request.respond(response);
    }
    let text = "text/plain; charset=utf-8";
    let response = match path.as_str() {
        "/metrics" => Response::from_string(handlers.metrics.encode())
            .with_header(header("Content-Type", CONTENT_TYPE)),
        "/healthz" => match (handlers.health)() {
            Ok(()) => Response::from_string("ok\n").with_header(header("Content-Type", text)),
            Err(reason) => Response::from_string(format!("{reason}\n"))
                .with_status_code(503)
                .with_header(header("Content-Type", text)),
        },
        "/status" => {
            let body = serde_json::to_string_pretty(&(handlers.status)())
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
            Response::from_string(body + "\n")
                .with_header(header("Content-Type", "application/json"))
        }
        _ => Response::from_string("not found\n")
            .with_status_code(404)
            .with_header(header("Content-Type", text)),
    };
    request.respond(response)
}
