//! `clipfilterd run`: the daemon's life from start-up to shutdown.
//!
//! 1. Read and validate the configuration (a bad file stops here, exit status 2).
//! 2. Register the `clipfilter` element, load the model once ([`Engine::shared`]; every element
//!    of every pipeline then uses it), open the snapshot folder, start event delivery (events
//!    left pending by an earlier run go first) and the metrics/health server.
//! 3. Start the pipelines; once none is still starting, tell systemd `READY=1`.
//! 4. Loop: beat the watchdog heartbeats (the supervisor's own, and the inference worker's when
//!    the worker has shown life recently), keep `STATUS=` up to date ("3 pipelines running,
//!    1 backing off"), reload the configuration on `SIGHUP` or when the file changes.
//! 5. On `SIGTERM`/`SIGINT`, also during start-up: `STOPPING=1`, stop the pipelines (their
//!    open matches end with events; one still starting after
//!    [`crate::daemon::supervisor::SHUTDOWN_WAIT`] is left behind), stop delivery (pending
//!    events stay in the outbox for the next run).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::select;

use crate::daemon::config::{Config, ModelSource, PipelineConfig};
use crate::daemon::console::auth::{self, Guard};
use crate::daemon::console::live::Live;
use crate::daemon::console::{self, ConsoleApi};
use crate::daemon::delivery::{Delivery, EventOutputs};
use crate::daemon::history::HistoryService;
use crate::daemon::history_api::{self, HistoryApi};
use crate::daemon::http::{self, HttpServer};
use crate::daemon::metrics::{BackendCounts, EndpointCounts, Metrics};
use crate::daemon::model::{ElementModel, load_engine};
use crate::daemon::notify::{Heartbeat, Notifier};
use crate::daemon::reload::{Trigger, Triggers};
use crate::daemon::snapshot::SnapshotStore;
use crate::daemon::supervisor::status::PipelineStatus;
use crate::daemon::supervisor::{Shared, Supervisor, diff};
use crate::error::Result;
use clipfilter::engine::Engine;

/// How long start-up waits for pipelines to leave `starting` before `READY=1`.
const READY_WAIT: Duration = Duration::from_secs(15);
/// The inference worker beats at least every 500 ms while idle; longer silence means it is
/// busy with one batch (or stuck).
const WORKER_SILENCE: Duration = Duration::from_secs(1);
/// `/healthz` fails when the main loop or the worker has been silent this long.
const UNHEALTHY_AFTER: Duration = Duration::from_secs(30);

fn model_label(model: &ElementModel) -> String {
    match &model.config.source {
        ModelSource::Repo { repo, .. } => repo.clone(),
        ModelSource::Path(p) => p.file_name().map_or_else(
            || p.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        ),
    }
}

/// Everything the HTTP callbacks read.
struct View {
    started: Instant,
    config_path: PathBuf,
    engine: RwLock<(ElementModel, Arc<Engine>)>,
    pipelines: Arc<RwLock<Vec<Arc<PipelineStatus>>>>,
    events: Arc<EventOutputs>,
    main_beat: Heartbeat,
    /// The pipelines as configured now (the console's label editor reads them).
    configs: RwLock<Vec<PipelineConfig>>,
    /// `[http] token`, read by the listener at each request.
    token: Arc<RwLock<Option<crate::daemon::secret::Secret>>>,
}

impl View {
    fn status(&self) -> serde_json::Value {
        let (model, engine) = self
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let stats = engine.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        let (image, text) = engine.providers();
        let pipelines: Vec<serde_json::Value> = self
            .pipelines
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|p| p.to_json())
            .collect();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "config": self.config_path.display().to_string(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "model": {
                "name": model_label(&model),
                "dir": model.dir.display().to_string(),
                "variant": model.config.variant.name(),
                "image_provider": image.name(),
                "text_provider": text.name(),
                "max_batch": model.config.max_batch,
                "backend": engine.config().backend.name(),
                "remote": remote_status(&engine),
            },
            "inference": {
                "images": load(&stats.images),
                "batches": load(&stats.batches),
                "dropped": load(&stats.dropped),
                "errors": load(&stats.errors),
                "unavailable": load(&stats.unavailable),
                "unavailable_reason": stats.unavailable_reason(),
                "queue_depth": load(&stats.queue_depth),
                "seconds_since_last_beat": stats.since_last_beat().as_secs_f64(),
            },
            "pipelines": pipelines,
            "events": {
                "submitted": self.events.submitted(),
                "pending": self.events.pending_counts(),
                "accepting": !self.events.is_full(),
                "refused": self.events.refused(),
            },
        })
    }

    fn health(&self) -> std::result::Result<(), String> {
        let engine = self
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        let worker = engine.stats().since_last_beat();
        if worker > UNHEALTHY_AFTER {
            return Err(format!(
                "the inference worker has been silent for {worker:.0?}"
            ));
        }
        if self.events.is_full() {
            return Err(format!(
                "the state disk is full: new events are refused ({} so far)",
                self.events.refused()
            ));
        }
        let main = self.main_beat.age();
        if main > UNHEALTHY_AFTER {
            return Err(format!(
                "the supervisor loop has been silent for {main:.0?}"
            ));
        }
        let pipelines = self.pipelines.read().unwrap_or_else(|p| p.into_inner());
        crate::daemon::supervisor::status::health(pipelines.iter().map(|p| &**p))
    }
}

/// The running daemon.
struct Daemon {
    config: Config,
    notifier: Notifier,
    metrics: Arc<Metrics>,
    supervisor: Supervisor,
    view: Arc<View>,
    http: Option<HttpServer>,
    inference_beat: Heartbeat,
    last_status: String,
}

/// Runs the daemon with the configuration file at `path` until `SIGTERM` or `SIGINT`.
pub fn run(path: &Path) -> Result<()> {
    // Signals first: a SIGTERM while the configuration or the model loads is not lost.
    let triggers = Triggers::start(path)?;
    let config = Config::load(path)?;
    crate::gstreamer::init()?;
    let notifier = Notifier::from_env();
    notifier.status("loading the model");
    let (model, engine) = load_engine(&config.model)?;
    let metrics = Arc::new(Metrics::new());
    register_model_metrics(&metrics, &model, &engine);

    let snapshots = SnapshotStore::open(&config.snapshots)?;
    let delivery = Delivery::start(&config.state_dir, &config.outputs, &metrics)?;
    let events = Arc::new(EventOutputs::new(delivery));
    let history = HistoryService::start(&config.history)?;
    if let Some(h) = &history {
        h.set_model(&engine);
        metrics.register_collector(h.collector());
    }
    /// Where each pipeline's `min_zscore` baselines are kept (`<pipeline>.json`).
    const BASELINES_DIR: &str = "baselines";
    let shared = Arc::new(Shared {
        events: events.clone(),
        snapshots: RwLock::new(Some(Arc::new(snapshots))),
        metrics: metrics.clone(),
        restart: RwLock::new(config.restart),
        history,
        live: Live::new(),
        baselines: config.state_dir.join(BASELINES_DIR),
    });
    let supervisor = Supervisor::new(shared);
    let view = Arc::new(View {
        started: Instant::now(),
        config_path: config.path.clone(),
        engine: RwLock::new((model.clone(), engine)),
        pipelines: supervisor.statuses(),
        events,
        main_beat: notifier.heartbeat("supervisor"),
        configs: RwLock::new(config.pipelines.clone()),
        token: Arc::new(RwLock::new(config.http_token.clone())),
    });
    let http = match config.listen {
        Some(addr) => Some(start_http(
            &addr.to_string(),
            &metrics,
            &view,
            supervisor.shared(),
        )?),
        None => None,
    };
    let inference_beat = notifier.heartbeat("inference");
    let mut daemon = Daemon {
        config,
        notifier,
        metrics,
        supervisor,
        view,
        http,
        inference_beat,
        last_status: String::new(),
    };
    if let Some(reload) = daemon.start(&model, &triggers) {
        if reload {
            daemon.reload();
        }
        daemon.main_loop(&triggers);
    }
    daemon.shutdown();
    Ok(())
}

fn register_model_metrics(metrics: &Metrics, model: &ElementModel, engine: &Arc<Engine>) {
    let label = model_label(model);
    metrics.set_execution_provider(&label, engine.providers().0.name());
    let model_metrics = metrics.model(&label);
    engine
        .stats()
        .on_batch(move |took, n| model_metrics.observe_batch(took, n));
    let stats = engine.stats().clone();
    metrics.set_queue_depth_source(&label, move || {
        stats.queue_depth.load(std::sync::atomic::Ordering::Relaxed) as i64
    });
    let stats = engine.stats().clone();
    let remote = engine.remote().cloned();
    metrics.set_backend_source(&label, move || BackendCounts {
        unavailable: stats.unavailable.load(std::sync::atomic::Ordering::Relaxed),
        fallback_batches: remote.as_ref().map_or(0, |r| r.fallback_batches()),
        fallback_active: remote.as_ref().is_some_and(|r| r.fallback_active()),
        endpoints: remote
            .iter()
            .flat_map(|r| r.status())
            .map(|e| EndpointCounts {
                up: e.health == clipfilter_triton::Health::Ready,
                endpoint: e.endpoint,
                requests: e.requests,
                errors: e.errors,
            })
            .collect(),
    });
}

/// The remote backend's state for `/status` (`null` for the local one).
fn remote_status(engine: &Engine) -> serde_json::Value {
    let Some(remote) = engine.remote() else {
        return serde_json::Value::Null;
    };
    let endpoints: Vec<serde_json::Value> = remote
        .status()
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "endpoint": e.endpoint,
                "state": match e.health {
                    clipfilter_triton::Health::Ready => "ready",
                    clipfilter_triton::Health::Down => "down",
                },
                "seconds_in_state": e.since.as_secs_f64(),
                "failures": e.failures,
                "last_error": e.last_error,
                "next_probe_seconds": e.next_probe.as_secs_f64(),
                "requests": e.requests,
                "errors": e.errors,
            })
        })
        .collect();
    serde_json::json!({
        "image_model": remote.config.image_model,
        "text_model": remote.config.text_model,
        "wire_format": remote.config.wire.as_str(),
        "fallback": remote.config.fallback.name(),
        "fallback_batches": remote.fallback_batches(),
        "fallback_active": remote.fallback_active(),
        "endpoints": endpoints,
    })
}

fn start_http(
    addr: &str,
    metrics: &Arc<Metrics>,
    view: &Arc<View>,
    shared: &Arc<Shared>,
) -> Result<HttpServer> {
    let (health, status) = (view.clone(), view.clone());
    let mut routes = http::core_routes(
        metrics.clone(),
        move || health.health(),
        move || status.status(),
    );
    let engine_view = view.clone();
    let engine = move || {
        engine_view
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    };
    if let Some(history) = &shared.history {
        routes = routes.merge(history_api::routes(Arc::new(HistoryApi {
            dir: history.dir().clone(),
            engine: Box::new(engine),
        })));
    }
    let (status, configs) = (view.clone(), view.clone());
    routes = routes.merge(console::routes(Arc::new(ConsoleApi {
        live: shared.live.clone(),
        history: shared.history.as_ref().map(|h| h.dir().clone()),
        status: Arc::new(move || status.status()),
        pipelines: Box::new(move || {
            configs
                .configs
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        }),
    })));
    let guard = Arc::new(Guard {
        token: view.token.clone(),
    });
    HttpServer::start_wrapped(addr, routes, move |app| {
        app.layer(axum::middleware::from_fn_with_state(guard, auth::guard))
    })
}

impl Daemon {
    fn beat(&mut self) {
        self.view.main_beat.beat();
        let engine = self
            .view
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone();
        if engine.stats().since_last_beat() <= WORKER_SILENCE {
            self.inference_beat.beat();
        }
        let dead = self.supervisor.dead_threads();
        let mut status = self.supervisor.counts().to_string();
        if !dead.is_empty() {
            status.push_str(&format!("; pipeline threads died: {}", dead.join(", ")));
        }
        if status != self.last_status {
            tracing::info!(status = %status, "status");
            self.notifier.status(&status);
            self.last_status = status;
        }
    }

    /// Starts the pipelines and waits (up to [`READY_WAIT`]) for them to leave `starting`
    /// before `READY=1`. `None` when a stop signal came meanwhile (nothing more is awaited);
    /// else whether a reload was asked for meanwhile.
    fn start(&mut self, model: &ElementModel, triggers: &Triggers) -> Option<bool> {
        let mut reload = false;
        let stop_requested = |reload: &mut bool| {
            while let Ok(t) = triggers.receiver().try_recv() {
                match t {
                    Trigger::Stop(signal) => {
                        tracing::info!(signal, "stopping during start-up");
                        return true;
                    }
                    Trigger::Hangup | Trigger::FileChanged => *reload = true,
                }
            }
            false
        };
        if stop_requested(&mut reload) {
            return None;
        }
        let plan = self.supervisor.plan(&self.config.pipelines, model);
        self.supervisor.apply(&plan);
        tracing::info!(pipelines = plan.added.len(), "pipelines started");
        let deadline = Instant::now() + READY_WAIT;
        while self.supervisor.counts().starting > 0 && Instant::now() < deadline {
            self.beat();
            if stop_requested(&mut reload) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.beat();
        self.notifier.ready();
        tracing::info!(status = %self.last_status, "ready");
        Some(reload)
    }

    fn main_loop(&mut self, triggers: &Triggers) {
        let period = self.notifier.beat_period().min(Duration::from_millis(500));
        loop {
            select! {
                recv(triggers.receiver()) -> t => match t {
                    Ok(Trigger::Hangup) => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        self.reload();
                    }
                    Ok(Trigger::FileChanged) => {
                        tracing::info!(config = %self.config.path.display(), "the configuration file changed: reloading");
                        self.reload();
                    }
                    Ok(Trigger::Stop(signal)) => {
                        tracing::info!(signal, "stopping");
                        return;
                    }
                    Err(_) => return,
                },
                default(period) => {}
            }
            self.beat();
        }
    }

    /// Reads the configuration again and applies the differences; an invalid file (or a model
    /// that does not load) is refused and the running configuration stays.
    fn reload(&mut self) {
        let new = match Config::load(&self.config.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "configuration NOT reloaded, the running one stays: {e}");
                self.notifier.status(&format!(
                    "{}; configuration reload refused: {e}",
                    self.last_status
                ));
                return;
            }
        };
        let mut model = self
            .view
            .engine
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        if new.model != self.config.model {
            match load_engine(&new.model) {
                Ok((m, engine)) => {
                    tracing::info!(model = %m.dir.display(), "new model loaded");
                    register_model_metrics(&self.metrics, &m, &engine);
                    if let Some(h) = &self.supervisor.shared().history {
                        h.set_model(&engine);
                    }
                    model = m.clone();
                    // The old engine stays alive while the old pipelines hold it.
                    let old = std::mem::replace(
                        &mut *self.view.engine.write().unwrap_or_else(|p| p.into_inner()),
                        (m, engine),
                    );
                    if model_label(&old.0) != model_label(&model) {
                        self.metrics.remove_model(&model_label(&old.0));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "configuration NOT reloaded (the new model does not load), the running one stays: {e}");
                    return;
                }
            }
        }
        let mut new = new;
        if new.history != self.config.history {
            tracing::warn!("[history] changes take effect at the next start");
            new.history = self.config.history.clone();
        }
        if new.state_dir != self.config.state_dir {
            tracing::warn!(
                running = %self.config.state_dir.display(),
                new = %new.state_dir.display(),
                "state_dir changes take effect at the next start"
            );
            new.state_dir = self.config.state_dir.clone();
        }
        let shared = self.supervisor.shared().clone();
        if new.snapshots != self.config.snapshots {
            match SnapshotStore::open(&new.snapshots) {
                Ok(store) => {
                    *shared.snapshots.write().unwrap_or_else(|p| p.into_inner()) =
                        Some(Arc::new(store));
                }
                Err(e) => {
                    tracing::error!(error = %e, "new [snapshots] settings not applied");
                    new.snapshots = self.config.snapshots.clone();
                }
            }
        }
        *shared.restart.write().unwrap_or_else(|p| p.into_inner()) = new.restart;
        // The listener reads the token at each request: a new one applies at once.
        *self.view.token.write().unwrap_or_else(|p| p.into_inner()) = new.http_token.clone();
        if new.listen != self.config.listen {
            match new.listen {
                Some(addr) => match start_http(
                    &addr.to_string(),
                    &self.metrics,
                    &self.view,
                    self.supervisor.shared(),
                ) {
                    Ok(server) => {
                        if let Some(old) = self.http.replace(server) {
                            old.shutdown();
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "new listen address not used");
                        new.listen = self.config.listen;
                        // The old address keeps the old token (it may need one).
                        new.http_token = self.config.http_token.clone();
                        *self.view.token.write().unwrap_or_else(|p| p.into_inner()) =
                            new.http_token.clone();
                    }
                },
                None => {
                    if let Some(old) = self.http.take() {
                        old.shutdown();
                    }
                }
            }
        }
        if new.output_configs != self.config.output_configs {
            let (state_dir, metrics) = (new.state_dir.clone(), self.metrics.clone());
            let outputs = new.outputs.clone();
            if let Err(e) = shared
                .events
                .replace(|| Delivery::start(&state_dir, &outputs, &metrics))
            {
                tracing::error!(error = %e, "the new outputs do not start; going back to the running ones");
                let old = self.config.outputs.clone();
                if let Err(e) = shared
                    .events
                    .replace(|| Delivery::start(&state_dir, &old, &metrics))
                {
                    tracing::error!(error = %e, "event delivery is down");
                }
                return;
            }
        }
        let plan = self.supervisor.plan(&new.pipelines, &model);
        self.supervisor.apply(&plan);
        *self.view.configs.write().unwrap_or_else(|p| p.into_inner()) = new.pipelines.clone();
        shared
            .live
            .retain_pipelines(&new.pipelines.iter().map(|p| p.name.as_str()).collect());
        let outputs = diff::outputs(&self.config.output_configs, &new.output_configs);
        tracing::info!(changes = %format!("{plan}; {outputs}"), "configuration reloaded");
        self.config = new;
    }

    fn shutdown(mut self) {
        self.notifier.stopping();
        self.notifier.status("stopping");
        self.supervisor.shutdown();
        self.supervisor.shared().events.shutdown();
        if let Some(http) = self.http.take() {
            http.shutdown();
        }
        self.notifier.shutdown();
        tracing::info!("stopped");
    }
}
