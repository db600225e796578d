//! Event delivery: the outbox plus one worker thread per output.
//!
//! [`Delivery::submit`] writes an event durably to the [`Outbox`] for each of its outputs and
//! wakes their workers; it returns once the event is on disk. Each worker drains its output's
//! queue strictly in order, retrying the oldest event with exponential backoff (with jitter)
//! until the endpoint acknowledges it, and deletes an event only after that. Events pending at a
//! crash are delivered by the next process that starts a `Delivery` on the same state folder.
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
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, select};

use crate::daemon::backoff::Backoff;
use crate::daemon::event::Event;
use crate::daemon::metrics::{Metrics, OutputMetrics};
use crate::daemon::outbox::Outbox;
use crate::daemon::output::jsonl::JsonlSink;
use crate::daemon::output::nats::{self, NatsSink};
use crate::daemon::output::webhook::WebhookSink;
use crate::daemon::output::{OutputConfig, Outputs, RetryPolicy, SendError, Sink, mqtt};
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
                    let sink = JsonlSink::open(c)?;
                    grace = grace.max(Duration::from_secs(1));
                    Box::new(move |ctx| run_sink(ctx, sink))
                }
                OutputConfig::Webhook(c) => {
                    let sink = WebhookSink::new(c)
                        .map_err(|m| Error::invalid(format!("output {name:?}"), m))?;
                    grace = grace.max(WebhookSink::timeout(c));
                    Box::new(move |ctx| run_sink(ctx, sink))
                }
                OutputConfig::Mqtt(c) => {
                    let tls = mqtt::tls_config(c)?;
                    let c = c.clone();
                    grace = grace.max(mqtt::SHUTDOWN_WAIT);
                    Box::new(move |ctx| mqtt::run(ctx, c, tls))
                }
                OutputConfig::Nats(c) => {
                    let sink = NatsSink::new(c.clone()).map_err(|e| {
                        Error::worker(format!("output {name:?}: cannot start its runtime: {e}"))
                    })?;
                    grace = grace.max(nats::DEFAULT_ACK_TIMEOUT);
                    Box::new(move |ctx| run_sink(ctx, sink))
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
        let dropped = self.outbox.enqueue(event, &names)?;
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

/// What a worker thread gets: its queue, its signals and its metrics.
pub(crate) struct WorkerCtx {
    pub(crate) name: String,
    pub(crate) outbox: Arc<Outbox>,
    /// A message (or a full channel) means new events were queued.
    pub(crate) wake: Receiver<()>,
    /// Disconnected when the worker must stop.
    pub(crate) stop: Receiver<()>,
    pub(crate) metrics: OutputMetrics,
    pub(crate) retry: RetryPolicy,
}

impl WorkerCtx {
    /// Waits `delay`; `false` when told to stop meanwhile.
    pub(crate) fn sleep(&self, delay: Duration) -> bool {
        select! {
            recv(self.stop) -> _ => false,
            default(delay) => true,
        }
    }

    /// True once the worker must stop.
    pub(crate) fn stopping(&self) -> bool {
        matches!(
            self.stop.try_recv(),
            Err(crossbeam_channel::TryRecvError::Disconnected)
        )
    }

    /// A backoff following the output's retry policy.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.retry.initial, self.retry.max)
    }

    /// Deletes acknowledged events and updates the metrics.
    pub(crate) fn acked(&self, seqs: &[i64]) -> Result<()> {
        let deleted = self.outbox.ack(&self.name, seqs)?;
        self.metrics.delivered.inc_by(deleted);
        self.metrics
            .pending
            .set(self.outbox.pending(&self.name) as i64);
        Ok(())
    }
}

/// Logs a failure streak once at its start and once at its end, not at every attempt.
#[derive(Default)]
pub(crate) struct FailureStreak {
    failures: u64,
    since: Option<Instant>,
}

impl FailureStreak {
    pub(crate) fn failed(&mut self, ctx: &WorkerCtx, error: &SendError, retry_in: Duration) {
        ctx.metrics.failures.inc();
        self.failures += 1;
        if self.failures == 1 {
            self.since = Some(Instant::now());
            tracing::warn!(
                output = %ctx.name,
                error = %error,
                retry_in = ?retry_in,
                pending = ctx.outbox.pending(&ctx.name),
                "delivery failed; retrying with backoff until the endpoint accepts it"
            );
        } else {
            tracing::debug!(output = %ctx.name, error = %error, attempt = self.failures, "delivery still failing");
        }
    }

    pub(crate) fn succeeded(&mut self, ctx: &WorkerCtx) {
        if self.failures > 0 {
            tracing::info!(
                output = %ctx.name,
                failed_attempts = self.failures,
                outage = ?self.since.map(|s| s.elapsed()).unwrap_or_default(),
                "delivery recovered"
            );
            self.failures = 0;
            self.since = None;
        }
    }
}

/// The loop of a synchronous output (JSON lines, webhook): send the oldest events, delete what
/// was acknowledged, back off on failure, wait for a wake-up when the queue is empty.
fn run_sink(ctx: WorkerCtx, mut sink: impl Sink) {
    let mut backoff = ctx.backoff();
    let mut streak = FailureStreak::default();
    while !ctx.stopping() {
        // Always start again from the head: it may have been dropped (queue full) meanwhile.
        let batch = match ctx.outbox.peek(&ctx.name, 0, sink.max_batch()) {
            Ok(batch) => batch,
            Err(e) => {
                let delay = backoff.next_delay();
                streak.failed(&ctx, &SendError(e.to_string()), delay);
                if !ctx.sleep(delay) {
                    break;
                }
                continue;
            }
        };
        if batch.is_empty() {
            select! {
                recv(ctx.wake) -> _ => continue,
                recv(ctx.stop) -> _ => break,
            }
        }
        let (acked, error) = match sink.send(&batch) {
            Ok(()) => (batch.len(), None),
            Err((n, e)) => (n, Some(e)),
        };
        let seqs: Vec<i64> = batch[..acked].iter().map(|p| p.seq).collect();
        if let Err(e) = ctx.acked(&seqs) {
            // The events were delivered but stay in the outbox: they will be sent again.
            tracing::error!(output = %ctx.name, error = %e, "cannot remove delivered events from the outbox");
        }
        match error {
            None => {
                backoff.reset();
                streak.succeeded(&ctx);
            }
            Some(e) => {
                let delay = backoff.next_delay();
                streak.failed(&ctx, &e, delay);
                if !ctx.sleep(delay) {
                    break;
                }
            }
        }
    }
    tracing::debug!(output = %ctx.name, pending = ctx.outbox.pending(&ctx.name), "output worker stopped");
}
