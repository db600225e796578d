//! Event delivery: the outbox plus one worker thread per output.
//!
//! The pipelines hand their events to [`EventOutputs`], which holds the delivery in use and
//! swaps it when a reload changes the outputs. The workers' loops are the outputs' own
//! ([`crate::daemon::output`]); this module only starts, feeds and stops them.
//!
//! [`Delivery::submit`] writes an event durably to the [`Outbox`] for each of its outputs and
//! wakes their workers; it returns once the event is on disk. Each worker drains its output's
//! queue strictly in order, retrying the oldest event with exponential backoff (with jitter)
//! until the endpoint acknowledges it, and deletes an event only after that. Events pending at a
//! crash are delivered by the next process that starts a `Delivery` on the same state folder.
//! While the state disk is full, [`Delivery::submit`] refuses events (an error for which
//! [`Error::is_disk_full`] holds, counted in `clipfilter_events_refused_total`) and a worker
//! whose delivered events cannot be deleted retries the deletion with backoff, sending nothing
//! meanwhile (see [`crate::daemon::outbox`]).
//!
//! ```no_run
//! # fn main() -> clipfilterd::error::Result<()> {
//! use clipfilter::matcher::Transition;
//! use clipfilterd::daemon::{delivery::Delivery, event::Event, metrics::Metrics};
//! # let outputs = clipfilterd::daemon::output::Outputs::default();
//! let metrics = Metrics::new();
//! let delivery = Delivery::start("/var/lib/clipfilter".as_ref(), &outputs, &metrics)?;
//! let event = Event::new("cam1", "white van", Transition::Start, 0.31, 0.82, 1200);
//! delivery.submit(&event, &["log", "alerts"])?;
//! delivery.shutdown();
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::daemon::event::Event;
use crate::daemon::metrics::{Metrics, OutputMetrics};
use crate::daemon::outbox::Outbox;
use crate::daemon::output::jsonl::JsonlOutput;
use crate::daemon::output::nats::{self, NatsOutput};
use crate::daemon::output::webhook::WebhookOutput;
use crate::daemon::output::worker::{WorkerCtx, run_sync};
use crate::daemon::output::{OutputConfig, Outputs, mqtt};
use crate::error::{Error, Result};

/// Extra time [`Delivery::shutdown`] allows beyond the longest request timeout.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);

struct Worker {
    wake: Sender<()>,
    metrics: OutputMetrics,
    handle: JoinHandle<()>,
}

/// Delivers events to the configured outputs. Dropping it stops the workers without waiting;
/// prefer [`Delivery::shutdown`].
pub struct Delivery {
    outbox: Arc<Outbox>,
    workers: BTreeMap<String, Worker>,
    /// Dropped to tell every worker to stop.
    stop: Option<Sender<()>>,
    /// Each worker sends its name here when it ends.
    finished: Receiver<String>,
    grace: Duration,
    /// Events refused because the state disk is full.
    refused: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("outbox", &self.outbox)
            .field("outputs", &self.workers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Opens `<state_dir>/outbox.sqlite3` and starts one worker per output. Events left pending
    /// by an earlier process are delivered first. Fails when the outbox cannot be opened (or is
    /// held by another process) or a JSON-lines file cannot be opened for appending.
    pub fn start(state_dir: &Path, outputs: &Outputs, metrics: &Metrics) -> Result<Delivery> {
        let outbox = Arc::new(Outbox::open(state_dir)?);
        outbox.set_full_gauge(metrics.outbox_full());
        for (name, count) in outbox.pending_counts() {
            if outputs.get(&name).is_some() {
                tracing::info!(output = %name, pending = count, "delivering events left pending");
            } else {
                tracing::warn!(
                    output = %name,
                    pending = count,
                    "events are pending for an output that is not configured; they are kept"
                );
            }
        }
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (finished_tx, finished) = crossbeam_channel::unbounded();
        let mut workers = BTreeMap::new();
        let mut grace = Duration::ZERO;
        for config in outputs.iter() {
            let name = config.name().to_owned();
            outbox.set_max_pending(&name, config.max_pending());
            let output_metrics = metrics.output(&name);
            output_metrics.pending.set(outbox.pending(&name) as i64);
            let (wake_tx, wake_rx) = crossbeam_channel::bounded(1);
            let ctx = WorkerCtx {
                name: name.clone(),
                outbox: Arc::clone(&outbox),
                wake: wake_rx,
                stop: stop_rx.clone(),
                metrics: output_metrics.clone(),
                retry: config.retry(),
            };
            let body: Box<dyn FnOnce(WorkerCtx) + Send> = match config {
                OutputConfig::Jsonl(c) => {
                    let output = JsonlOutput::open(c)?;
                    grace = grace.max(Duration::from_secs(1));
                    Box::new(move |ctx| run_sync(ctx, output))
                }
                OutputConfig::Webhook(c) => {
                    let output = WebhookOutput::new(c)
                        .map_err(|m| Error::invalid(format!("output {name:?}"), m))?;
                    grace = grace.max(WebhookOutput::timeout(c));
                    Box::new(move |ctx| run_sync(ctx, output))
                }
                OutputConfig::Mqtt(c) => {
                    let tls = mqtt::tls_config(c)?;
                    let c = c.clone();
                    grace = grace.max(mqtt::SHUTDOWN_WAIT);
                    Box::new(move |ctx| mqtt::run(ctx, c, tls))
                }
                OutputConfig::Nats(c) => {
                    let output = NatsOutput::new(c.clone()).map_err(|e| {
                        Error::worker(format!("output {name:?}: cannot start its runtime: {e}"))
                    })?;
                    grace = grace.max(nats::DEFAULT_ACK_TIMEOUT);
                    Box::new(move |ctx| run_sync(ctx, output))
                }
            };
            let kind = config.kind();
            let finished_tx = finished_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("out-{name}"))
                .spawn(move || {
                    let span = tracing::info_span!("output", name = %ctx.name, kind);
                    let _enter = span.enter();
                    // Reports the end of the worker, also when it panics.
                    let _finished = Finished {
                        tx: finished_tx,
                        name: ctx.name.clone(),
                    };
                    body(ctx);
                })
                .map_err(|e| Error::worker(format!("cannot start output thread: {e}")))?;
            workers.insert(
                name,
                Worker {
                    wake: wake_tx,
                    metrics: output_metrics,
                    handle,
                },
            );
        }
        Ok(Delivery {
            outbox,
            workers,
            stop: Some(stop_tx),
            finished,
            grace: grace + SHUTDOWN_MARGIN,
            refused: metrics.events_refused(),
        })
    }

    /// Writes `event` durably for each output in `outputs` and wakes their workers. When it
    /// returns `Ok`, the event survives a crash. Every name must be a configured output
    /// (validated beforehand with [`Outputs::check_names`]); an unknown name is an error and
    /// nothing is written.
    pub fn submit<S: AsRef<str>>(&self, event: &Event, outputs: &[S]) -> Result<()> {
        let names: Vec<&str> = outputs.iter().map(AsRef::as_ref).collect();
        if let Some(unknown) = names.iter().find(|n| !self.workers.contains_key(**n)) {
            return Err(Error::invalid(
                "event output",
                format!(
                    "unknown output {unknown:?} for pipeline {:?}",
                    event.pipeline
                ),
            ));
        }
        if names.is_empty() {
            return Ok(());
        }
        let dropped = self.outbox.enqueue(event, &names).inspect_err(|e| {
            if e.is_disk_full() {
                // Logged once when the outbox became full, counted for each event.
                self.refused.inc();
            }
        })?;
        for d in &dropped {
            tracing::warn!(
                output = %d.output,
                event_id = %d.event_id,
                "outbox full: dropped the oldest pending event of this output"
            );
            if let Some(w) = self.workers.get(&d.output) {
                w.metrics.dropped.inc();
            }
        }
        for name in names {
            if let Some(w) = self.workers.get(name) {
                w.metrics.pending.set(self.outbox.pending(name) as i64);
                // A full wake channel already holds a wake-up: nothing is lost.
                let _ = w.wake.try_send(());
            }
        }
        tracing::debug!(
            event_id = %event.id,
            pipeline = %event.pipeline,
            label = %event.label,
            state = %event.state,
            "event queued"
        );
        Ok(())
    }

    /// True while the state disk is full and new events are refused.
    pub fn is_full(&self) -> bool {
        self.outbox.is_full()
    }

    /// Events waiting for `output` (0 for an unknown output).
    pub fn pending(&self, output: &str) -> u64 {
        self.outbox.pending(output)
    }

    /// Events waiting per output, including outputs no longer configured (for `/status`).
    pub fn pending_counts(&self) -> BTreeMap<String, u64> {
        self.outbox.pending_counts()
    }

    /// Names of the outputs being delivered to.
    pub fn outputs(&self) -> impl Iterator<Item = &str> {
        self.workers.keys().map(String::as_str)
    }

    /// Stops the workers and joins them. A worker in the middle of a request finishes it (a
    /// webhook request is bounded by its timeout), so this returns within the longest request
    /// timeout plus two seconds. Returns `true` when every worker ended in that time (the others
    /// are left to end on their own). Pending events stay in the outbox.
    pub fn shutdown(mut self) -> bool {
        self.stop.take();
        let deadline = Instant::now() + self.grace;
        let mut ended = std::collections::BTreeSet::new();
        while ended.len() < self.workers.len() {
            match self.finished.recv_deadline(deadline) {
                Ok(name) => {
                    ended.insert(name);
                }
                Err(_) => break,
            }
        }
        let mut clean = true;
        for (name, worker) in std::mem::take(&mut self.workers) {
            if ended.contains(&name) {
                // Its work is done; the thread is only unwinding its stack: joining is immediate.
                if worker.handle.join().is_err() {
                    tracing::error!(output = %name, "output worker panicked");
                    clean = false;
                }
            } else {
                tracing::warn!(output = %name, "output worker did not stop in time; leaving it");
                clean = false;
            }
        }
        clean
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        self.stop.take();
    }
}

/// Sends the worker's name when dropped: at the end of the worker thread, panic or not.
struct Finished {
    tx: Sender<String>,
    name: String,
}

impl Drop for Finished {
    fn drop(&mut self) {
        let _ = self.tx.send(std::mem::take(&mut self.name));
    }
}

/// Where the pipelines' events go: the [`Delivery`] to the configured outputs in use, replaced
/// when a reload changes the outputs, and the count of events handed to it.
#[derive(Debug, Default)]
pub struct EventOutputs {
    delivery: RwLock<Option<Delivery>>,
    submitted: AtomicU64,
    refused: AtomicU64,
}

impl EventOutputs {
    /// Events go to the outputs of a started delivery.
    pub fn new(delivery: Delivery) -> EventOutputs {
        EventOutputs {
            delivery: RwLock::new(Some(delivery)),
            submitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Writes `event` durably for `outputs` (see [`Delivery::submit`]).
    pub fn submit(&self, event: &Event, outputs: &[String]) -> Result<()> {
        let guard = self.delivery.read().unwrap_or_else(|p| p.into_inner());
        let delivery = guard
            .as_ref()
            .ok_or_else(|| Error::worker("event delivery is not running"))?;
        delivery.submit(event, outputs).inspect_err(|e| {
            if e.is_disk_full() {
                self.refused.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        self.submitted.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Events refused since the start because the state disk was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// True while the state disk is full and new events are refused.
    pub fn is_full(&self) -> bool {
        let guard = self.delivery.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().is_some_and(Delivery::is_full)
    }

    /// Events submitted since the start.
    pub fn submitted(&self) -> u64 {
        self.submitted.load(Ordering::Relaxed)
    }

    /// Events waiting per output.
    pub fn pending_counts(&self) -> BTreeMap<String, u64> {
        let guard = self.delivery.read().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .map(Delivery::pending_counts)
            .unwrap_or_default()
    }

    /// Stops the delivery in use and starts another with `start` (pipelines wait meanwhile).
    /// When `start` fails, nothing delivers until the next successful replacement.
    pub fn replace(&self, start: impl FnOnce() -> Result<Delivery>) -> Result<()> {
        let mut guard = self.delivery.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = guard.take() {
            old.shutdown();
        }
        *guard = Some(start()?);
        Ok(())
    }

    /// Stops the delivery (pending events stay in the outbox).
    pub fn shutdown(&self) {
        let mut guard = self.delivery.write().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = guard.take() {
            old.shutdown();
        }
    }
}
