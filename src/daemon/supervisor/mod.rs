//! Supervision of the pipelines: one thread per pipeline, restarts with backoff, events out.
//!
//! - [`diff`]: what a reload changes, decided without starting anything ([`Plan`]);
//! - this module: the [`Supervisor`] carries a plan out (spawns, stops, updates outputs) and
//!   shuts everything down;
//! - `runner`: one pipeline's life on its thread (attempt, play, backoff, the bus loop);
//! - `events`: the element's messages become [`crate::daemon::event::Event`]s handed to
//!   [`EventOutputs`], and score histograms;
//! - [`status`]: each pipeline's state, restarts, last error and frame counters
//!   ([`PipelineStatus`]) that `/status` and the metrics read.
//!
//! Failures stay inside their thread: the other pipelines and the daemon carry on.

pub mod diff;
mod events;
mod runner;
pub mod status;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::daemon::config::{PipelineConfig, RestartPolicy};
use crate::daemon::console::live::Live;
use crate::daemon::delivery::EventOutputs;
use crate::daemon::history::HistoryService;
use crate::daemon::metrics::{Metrics, PipelineState};
use crate::daemon::model::ElementModel;
use crate::daemon::snapshot::SnapshotStore;
use crate::error::{Error, Result};
use diff::Plan;
use runner::{Control, Runner};
use status::{PipelineStatus, StateCounts};

/// At shutdown, how long the pipelines together get to stop. A pipeline still busy starting
/// (its element embedding a large label set) is left behind: the process is ending.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(4);

/// What every pipeline thread shares.
#[derive(Debug)]
pub struct Shared {
    pub events: Arc<EventOutputs>,
    pub snapshots: RwLock<Option<Arc<SnapshotStore>>>,
    pub metrics: Arc<Metrics>,
    pub restart: RwLock<RestartPolicy>,
    /// The sample history, when on.
    pub history: Option<Arc<HistoryService>>,
    /// The console's live feed.
    pub live: Arc<Live>,
    /// The folder of each pipeline's `min_zscore` baselines (the element's `baseline-file`).
    pub baselines: std::path::PathBuf,
}

/// A running pipeline's thread, and what it was started with.
struct Handle {
    config: PipelineConfig,
    model: ElementModel,
    status: Arc<PipelineStatus>,
    control: Sender<Control>,
    thread: JoinHandle<()>,
}

/// The running pipelines.
pub struct Supervisor {
    shared: Arc<Shared>,
    handles: BTreeMap<String, Handle>,
    list: Arc<RwLock<Vec<Arc<PipelineStatus>>>>,
    stopping: Arc<AtomicBool>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("pipelines", &self.handles.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// A supervisor with no pipelines yet.
    pub fn new(shared: Arc<Shared>) -> Supervisor {
        Supervisor {
            shared,
            handles: BTreeMap::new(),
            list: Arc::new(RwLock::new(Vec::new())),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// What the pipeline threads share.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The statuses of the pipelines, in name order (shared with `/status` and the metrics).
    pub fn statuses(&self) -> Arc<RwLock<Vec<Arc<PipelineStatus>>>> {
        self.list.clone()
    }

    /// Pipelines per state.
    pub fn counts(&self) -> StateCounts {
        StateCounts::of(self.handles.values().map(|h| &*h.status))
    }

    /// What making the running set match `configs` with `model` takes (see [`diff::diff`]).
    pub fn plan(&self, configs: &[PipelineConfig], model: &ElementModel) -> Plan {
        diff::diff(
            self.handles.values().map(|h| (&h.config, &h.model)),
            configs,
            model,
        )
    }

    /// Carries `plan` out: stops the removed and restarted pipelines (all at once), sends the
    /// updated ones their new outputs, then starts the added and restarted ones.
    pub fn apply(&mut self, plan: &Plan) {
        let stop: Vec<String> = plan
            .removed
            .iter()
            .cloned()
            .chain(plan.restarted.iter().map(|c| c.name.clone()))
            .collect();
        self.stop(&stop);
        for config in &plan.updated {
            if let Some(h) = self.handles.get_mut(&config.name) {
                h.config = config.clone();
                let _ = h.control.send(Control::Outputs(config.outputs.clone()));
            }
        }
        for config in plan.added.iter().chain(&plan.restarted) {
            match self.spawn(config, &plan.model) {
                Ok(h) => {
                    self.handles.insert(config.name.clone(), h);
                }
                Err(e) => {
                    tracing::error!(pipeline = %config.name, error = %e, "cannot start the pipeline thread")
                }
            }
        }
        self.publish();
    }

    fn spawn(&self, config: &PipelineConfig, model: &ElementModel) -> Result<Handle> {
        let metrics = self.shared.metrics.pipeline(&config.name);
        let status = Arc::new(PipelineStatus::new(
            &config.name,
            config.source.display(),
            metrics,
        ));
        let reader = Arc::downgrade(&status);
        self.shared.metrics.set_frame_source(&config.name, move || {
            reader.upgrade().map(|s| s.frames()).unwrap_or_default()
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let runner = Runner::new(config, model, self.shared.clone(), status.clone(), rx);
        let guard = status.clone();
        let thread = std::thread::Builder::new()
            .name(format!("pipe-{}", config.name))
            .spawn(move || {
                // A panic outside an attempt ends the thread; it is reported, not silent.
                if guard.guarded(|| runner.run()).is_err() {
                    guard.set_state(PipelineState::Stopped, false);
                }
            })
            .map_err(|e| Error::worker(format!("cannot start a thread: {e}")))?;
        Ok(Handle {
            config: config.clone(),
            model: model.clone(),
            status,
            control: tx,
            thread,
        })
    }

    /// Stops the named pipelines (all at once) and waits for their threads.
    fn stop(&mut self, names: &[String]) {
        let handles: Vec<Handle> = names
            .iter()
            .filter_map(|n| self.handles.remove(n))
            .collect();
        for h in &handles {
            let _ = h.control.send(Control::Stop);
        }
        // A reload waits for the pipelines it replaces; a shutdown waits a bounded time.
        let deadline = self
            .stopping
            .load(Ordering::Relaxed)
            .then(|| Instant::now() + SHUTDOWN_WAIT);
        for h in handles {
            if let Some(deadline) = deadline {
                while !h.thread.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if !h.thread.is_finished() {
                    tracing::warn!(
                        pipeline = %h.config.name,
                        "the pipeline did not stop within {SHUTDOWN_WAIT:?} (still starting?): leaving it"
                    );
                    continue;
                }
            }
            if h.thread.join().is_err() {
                tracing::error!(pipeline = %h.config.name, "pipeline thread panicked");
            }
            if !self.stopping.load(Ordering::Relaxed) {
                self.shared.metrics.remove_pipeline(&h.config.name);
            }
        }
        self.publish();
    }

    fn publish(&self) {
        let list = self.handles.values().map(|h| h.status.clone()).collect();
        *self.list.write().unwrap_or_else(|p| p.into_inner()) = list;
    }

    /// Stops every pipeline.
    pub fn shutdown(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        let names: Vec<String> = self.handles.keys().cloned().collect();
        self.stop(&names);
    }

    /// Whether any pipeline thread ended on its own (a panic): the supervisor is then unhealthy.
    pub fn dead_threads(&self) -> Vec<String> {
        self.handles
            .iter()
            .filter(|(_, h)| h.thread.is_finished())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}
