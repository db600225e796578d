//! What every output worker shares: its context (queue, signals, metrics, retry policy), the
//! logging of failure streaks, and the sending loop of the outputs that acknowledge
//! synchronously (JSON lines, webhook). MQTT acknowledges asynchronously and has its own loop in
//! [`super::mqtt`], built from the same parts.
//!
//! [`crate::daemon::delivery::Delivery`] starts one worker thread per output with a
//! [`WorkerCtx`]; nothing here knows about delivery.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};

use crate::daemon::backoff::Backoff;
use crate::daemon::metrics::OutputMetrics;
use crate::daemon::outbox::{Outbox, Pending};
use crate::daemon::output::RetryPolicy;
use crate::error::Result;

/// Why one delivery attempt failed; logged once per failure streak, without secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendError(pub(crate) String);

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An output that acknowledges synchronously: delivers a batch in order and reports how many
/// events from the front of the batch the endpoint acknowledged. [`run_sync`] drives it.
pub(crate) trait SyncOutput: Send {
    /// Most events handed to one [`SyncOutput::send`] call.
    fn max_batch(&self) -> usize;

    /// Sends `batch` in order. `Ok(())` means all were acknowledged; `Err((n, e))` means the
    /// first `n` were acknowledged and the rest were not.
    fn send(&mut self, batch: &[Pending]) -> Result<(), (usize, SendError)>;
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

    /// Deletes acknowledged events and updates the metrics. When the outbox refuses (a full
    /// disk), the events were delivered but stay in it: the caller keeps them and calls this
    /// again after a backoff, without sending them again.
    pub(crate) fn acked(&self, seqs: &[i64]) -> Result<(), SendError> {
        match self.outbox.ack(&self.name, seqs) {
            Ok(deleted) => {
                self.metrics.delivered.inc_by(deleted);
                self.metrics
                    .pending
                    .set(self.outbox.pending(&self.name) as i64);
                Ok(())
            }
            Err(e) => Err(SendError(format!(
                "delivered, but cannot remove the events from the outbox: {e}"
            ))),
        }
    }

    /// Logs the end of the worker with what it leaves pending.
    pub(crate) fn stopped(&self) {
        tracing::debug!(output = %self.name, pending = self.outbox.pending(&self.name), "output worker stopped");
    }
}

/// Logs a failure streak once at its start and once at its end, not at every attempt.
#[derive(Default)]
struct FailureStreak {
    failures: u64,
    since: Option<Instant>,
}

impl FailureStreak {
    fn failed(&mut self, ctx: &WorkerCtx, error: &SendError, retry_in: Duration) {
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

    fn succeeded(&mut self, ctx: &WorkerCtx) {
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

/// A worker's retries: the backoff of its retry policy and the failure streak it logs.
pub(crate) struct Retry {
    backoff: Backoff,
    streak: FailureStreak,
}

impl Retry {
    /// Retries following `ctx`'s policy, no failure yet.
    pub(crate) fn new(ctx: &WorkerCtx) -> Retry {
        Retry {
            backoff: Backoff::new(ctx.retry.initial, ctx.retry.max),
            streak: FailureStreak::default(),
        }
    }

    /// Counts and logs a failed attempt, then waits the next backoff delay; `false` when told
    /// to stop meanwhile.
    pub(crate) fn failed(&mut self, ctx: &WorkerCtx, error: &SendError) -> bool {
        let delay = self.backoff.next_delay();
        self.streak.failed(ctx, error, delay);
        ctx.sleep(delay)
    }

    /// An attempt went through: the backoff starts afresh and a failure streak ends.
    pub(crate) fn succeeded(&mut self, ctx: &WorkerCtx) {
        self.backoff.reset();
        self.streak.succeeded(ctx);
    }
}

/// The loop of a synchronous output (JSON lines, webhook): send the oldest events, delete what
/// was acknowledged, back off on failure, wait for a wake-up when the queue is empty.
pub(crate) fn run_sync(ctx: WorkerCtx, mut output: impl SyncOutput) {
    let mut retry = Retry::new(&ctx);
    // Delivered events the outbox could not delete yet: deleted before anything is sent.
    let mut delivered: Vec<i64> = Vec::new();
    while !ctx.stopping() {
        if !delivered.is_empty() {
            match ctx.acked(&delivered) {
                Ok(()) => delivered.clear(),
                Err(e) => {
                    if !retry.failed(&ctx, &e) {
                        break;
                    }
                    continue;
                }
            }
        }
        // Always start again from the head: it may have been dropped (queue full) meanwhile.
        let batch = match ctx.outbox.peek(&ctx.name, 0, output.max_batch()) {
            Ok(batch) => batch,
            Err(e) => {
                if !retry.failed(&ctx, &SendError(e.to_string())) {
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
        let (acked, error) = match output.send(&batch) {
            Ok(()) => (batch.len(), None),
            Err((n, e)) => (n, Some(e)),
        };
        delivered = batch[..acked].iter().map(|p| p.seq).collect();
        let error = match ctx.acked(&delivered) {
            Ok(()) => {
                delivered.clear();
                error
            }
            Err(e) => Some(error.unwrap_or(e)),
        };
        match error {
            None => retry.succeeded(&ctx),
            Some(e) => {
                if !retry.failed(&ctx, &e) {
                    break;
                }
            }
        }
    }
    ctx.stopped();
}
