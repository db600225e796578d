//! A pool of endpoints behind a blocking API: requests go round-robin over the ready ones; one
//! that fails is taken out and probed in the background with exponential backoff and jitter until
//! it answers again (server ready, every configured model ready and, once per return, its
//! metadata checked). When none is ready, calls fail at once with [`Error::NoReadyEndpoint`]; no
//! call ever waits longer than its timeout.
//!
//! The pool owns a small tokio runtime (one worker thread for the connections and the prober);
//! the blocking calls run their future on the calling thread, so several threads may call at once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::metadata::{ModelMetadata, ModelSpec};
use crate::tensor::Tensor;

pub use crate::config::{Backoff, ModelCheck, PoolConfig, TlsConfig};

/// Whether an endpoint takes requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ready,
    Down,
}

/// One endpoint as [`Pool::status`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub health: Health,
    /// Time in this state.
    pub since: Duration,
    /// Consecutive failed probes or requests (0 when ready).
    pub failures: u32,
    /// Why it went down (kept after it came back, for the record).
    pub last_error: Option<String>,
    /// When it is probed next (down: its backoff; ready: the periodic health check).
    pub next_probe: Duration,
    /// Requests sent to it, and those that failed.
    pub requests: u64,
    pub errors: u64,
}

struct State {
    health: Health,
    since: Instant,
    failures: u32,
    last_error: Option<String>,
    next_probe: Instant,
    /// Metadata checked since it last came back.
    checked: bool,
}

struct Member {
    client: Client,
    state: Mutex<State>,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Member {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_ready(&self) -> bool {
        self.state().health == Health::Ready
    }
}

struct Shared {
    members: Vec<Member>,
    next: AtomicUsize,
    config: PoolConfig,
    /// Wakes the prober when an endpoint went down (its probe time moved).
    wake: Notify,
}

/// Endpoints with failover, behind a blocking API. See the module documentation.
pub struct Pool {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoints", &self.shared.config.endpoints)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Checks the configuration, probes every endpoint once (concurrently, each within the probe
    /// timeout) and starts the background prober. Endpoints that are down are not an error here
    /// (they come back by themselves; see [`Pool::wait_ready`]), but a reachable endpoint whose
    /// model does not match its [`ModelSpec`] is: [`Error::MetadataMismatch`].
    pub fn connect(config: PoolConfig) -> Result<Pool> {
        let addresses = config.validate()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideAsyncRuntime);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("triton-client")
            .enable_all()
            .build()
            .map_err(|cause| Error::Runtime { cause })?;
        let members = {
            let _guard = runtime.enter();
            let now = Instant::now();
            addresses
                .into_iter()
                .map(|a| {
                    Ok(Member {
                        client: Client::new(a, &config)?,
                        state: Mutex::new(State {
                            health: Health::Down,
                            since: now,
                            failures: 0,
                            last_error: Some("not probed yet".into()),
                            next_probe: now,
                            checked: false,
                        }),
                        requests: AtomicU64::new(0),
                        errors: AtomicU64::new(0),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let shared = Arc::new(Shared {
            members,
            next: AtomicUsize::new(0),
            config,
            wake: Notify::new(),
        });
        let first = runtime.block_on(probe_all(shared.clone(), None));
        for result in first {
            if let Err(e @ Error::MetadataMismatch { .. }) = result {
                return Err(e);
            }
        }
        let (stop, stopped) = watch::channel(false);
        runtime.spawn(prober(shared.clone(), stopped));
        Ok(Pool {
            shared,
            stop,
            runtime: Some(runtime),
        })
    }

    fn block_on<T>(&self, future: impl Future<Output = Result<T>>) -> Result<T> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideAsyncRuntime);
        }
        match &self.runtime {
            Some(runtime) => runtime.block_on(future),
            None => Err(Error::Runtime {
                cause: std::io::Error::other("the pool is shut down"),
            }),
        }
    }

    /// Runs `model` on one ready endpoint (round-robin) and returns every output. An endpoint that
    /// fails (unreachable, timing out, not ready) is taken out and the request goes to the next
    /// ready one, all within the pool's timeout.
    pub fn infer(&self, model: &str, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let batch = inputs.first().and_then(|t| t.shape().first().copied());
        let shared = self.shared.clone();
        self.block_on(async move {
            shared
                .with_failover(model, "infer", |client, timeout| {
                    let inputs = inputs.clone();
                    let span = tracing::debug_span!(
                        "triton_infer",
                        endpoint = client.name(),
                        model,
                        batch
                    );
                    async move { client.infer(model, inputs, timeout).await }.instrument(span)
                })
                .await
        })
    }

    /// The model's metadata, from one ready endpoint.
    pub fn model_metadata(&self, model: &str) -> Result<ModelMetadata> {
        let shared = self.shared.clone();
        self.block_on(async move {
            shared
                .with_failover(model, "model metadata", |client, timeout| async move {
                    client.model_metadata(model, timeout).await
                })
                .await
        })
    }

    /// Checks `model` against `spec` on every ready endpoint; the first that differs is the error.
    pub fn check_model(&self, model: &str, spec: &ModelSpec) -> Result<()> {
        let shared = self.shared.clone();
        self.block_on(async move {
            let timeout = shared.config.timeout;
            for member in shared.members.iter().filter(|m| m.is_ready()) {
                let meta = member.client.model_metadata(model, timeout).await?;
                let problems = meta.check(spec);
                if !problems.is_empty() {
                    return Err(Error::MetadataMismatch {
                        endpoint: member.client.name().to_string(),
                        model: model.to_string(),
                        problems,
                    });
                }
            }
            Ok(())
        })
    }

    /// Every endpoint's state, in configuration order.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        self.shared
            .members
            .iter()
            .map(|m| {
                let s = m.state();
                EndpointStatus {
                    endpoint: m.client.name().to_string(),
                    health: s.health,
                    since: now.saturating_duration_since(s.since),
                    failures: s.failures,
                    last_error: s.last_error.clone(),
                    next_probe: s.next_probe.saturating_duration_since(now),
                    requests: m.requests.load(Ordering::Relaxed),
                    errors: m.errors.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// How many endpoints are ready now.
    pub fn ready_count(&self) -> usize {
        self.shared.members.iter().filter(|m| m.is_ready()).count()
    }

    /// Waits until at least one endpoint is ready, at most `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ready_count() > 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.shared.none_ready("(any)"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Shared {
    /// The next ready endpoint after the last one used, skipping `tried`.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| !tried.contains(&i) && self.members[i].is_ready())
    }

    fn none_ready(&self, model: &str) -> Error {
        let now = Instant::now();
        let mut next_retry: Option<Duration> = None;
        let mut last_error = String::from("none recorded");
        let mut latest: Option<Instant> = None;
        for m in &self.members {
            let s = m.state();
            let due = s.next_probe.saturating_duration_since(now);
            next_retry = Some(next_retry.map_or(due, |d| d.min(due)));
            if s.health == Health::Down && latest.is_none_or(|t| s.since > t) {
                latest = Some(s.since);
                last_error = s.last_error.clone().unwrap_or_default();
            }
        }
        Error::NoReadyEndpoint {
            model: model.to_string(),
            total: self.members.len(),
            next_retry,
            last_error,
        }
    }

    /// Takes a member out after `error`, to be probed again after its backoff.
    fn mark_down(&self, index: usize, error: &Error) {
        let member = &self.members[index];
        let mut s = member.state();
        s.failures = s.failures.saturating_add(1);
        s.last_error = Some(error.to_string());
        s.next_probe = Instant::now() + self.config.backoff.delay(s.failures);
        if s.health == Health::Ready {
            s.health = Health::Down;
            s.since = Instant::now();
            s.checked = false;
            tracing::warn!(endpoint = member.client.name(), error = %error, "Triton endpoint down");
        }
        drop(s);
        self.wake.notify_one();
    }

    /// Runs `call` on ready endpoints in turn until one answers, an error that is not the
    /// endpoint's fault comes back, or the timeout is spent.
    async fn with_failover<T, F, Fut>(
        &self,
        model: &str,
        operation: &'static str,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(Client, Duration) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let timeout = self.config.timeout;
        let deadline = Instant::now() + timeout;
        let mut tried = Vec::new();
        let mut last: Option<Error> = None;
        loop {
            let Some(index) = self.pick(&tried) else {
                return Err(match last {
                    Some(e) if !self.members.iter().any(Member::is_ready) => {
                        let mut none = self.none_ready(model);
                        if let Error::NoReadyEndpoint { last_error, .. } = &mut none {
                            *last_error = e.to_string();
                        }
                        none
                    }
                    Some(e) => e,
                    None => self.none_ready(model),
                });
            };
            tried.push(index);
            let remaining = deadline.saturating_duration_since(Instant::now());
            let member = &self.members[index];
            if remaining.is_zero() {
                return Err(last.unwrap_or_else(|| Error::Timeout {
                    endpoint: member.client.name().to_string(),
                    model: Some(model.to_string()),
                    operation,
                    timeout,
                }));
            }
            member.requests.fetch_add(1, Ordering::Relaxed);
            match call(member.client.clone(), remaining).await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    member.errors.fetch_add(1, Ordering::Relaxed);
                    if matches!(
                        e,
                        Error::Status {
                            code: tonic::Code::NotFound,
                            ..
                        }
                    ) {
                        // This server lacks the model; another may have it. Not a reason to
                        // take the endpoint out (its configured models are probed).
                        last = Some(e);
                        continue;
                    }
                    if !e.is_endpoint_failure() {
                        return Err(e);
                    }
                    self.mark_down(index, &e);
                    if matches!(e, Error::Timeout { .. }) && Instant::now() >= deadline {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
    }

    /// One health check: server ready, every configured model ready, and their metadata when the
    /// endpoint was not ready before.
    async fn probe(&self, index: usize) -> Result<()> {
        let member = &self.members[index];
        let client = &member.client;
        let timeout = self.config.probe_timeout;
        if !client.server_ready(timeout).await? {
            // Live but not ready (loading, shutting down), or not even live: say which.
            let live = client.server_live(timeout).await.unwrap_or(false);
            return Err(Error::NotReady {
                endpoint: client.name().to_string(),
                model: None,
                live,
            });
        }
        let check_metadata = !member.state().checked;
        for model in &self.config.models {
            if !client.model_ready(&model.name, timeout).await? {
                return Err(Error::NotReady {
                    endpoint: client.name().to_string(),
                    model: Some(model.name.clone()),
                    live: true,
                });
            }
            if let (true, Some(spec)) = (check_metadata, &model.spec) {
                let meta = client.model_metadata(&model.name, timeout).await?;
                let problems = meta.check(spec);
                if !problems.is_empty() {
                    return Err(Error::MetadataMismatch {
                        endpoint: client.name().to_string(),
                        model: model.name.clone(),
                        problems,
                    });
                }
            }
        }
        Ok(())
    }

    fn record_probe(&self, index: usize, result: &Result<()>) {
        let member = &self.members[index];
        let now = Instant::now();
        let mut s = member.state();
        match result {
            Ok(()) => {
                if s.health == Health::Down {
                    tracing::info!(
                        endpoint = member.client.name(),
                        after_failures = s.failures,
                        "Triton endpoint ready"
                    );
                    s.health = Health::Ready;
                    s.since = now;
                }
                s.failures = 0;
                s.checked = true;
                s.next_probe = now + self.config.probe_interval;
            }
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                s.last_error = Some(e.to_string());
                s.next_probe = now + self.config.backoff.delay(s.failures);
                if s.health == Health::Ready {
                    tracing::warn!(endpoint = member.client.name(), error = %e, "Triton endpoint down");
                    s.health = Health::Down;
                    s.since = now;
                    s.checked = false;
                } else {
                    tracing::debug!(endpoint = member.client.name(), error = %e, failures = s.failures, "Triton endpoint still down");
                }
            }
        }
    }
}

/// Probes the members that are due (all when `due` is `None`), concurrently; returns each result.
async fn probe_all(shared: Arc<Shared>, due: Option<Instant>) -> Vec<Result<()>> {
    let mut set = JoinSet::new();
    for index in 0..shared.members.len() {
        if let Some(now) = due
            && shared.members[index].state().next_probe > now
        {
            continue;
        }
        let shared = shared.clone();
        let span = tracing::debug_span!(
            "triton_probe",
            endpoint = shared.members[index].client.name()
        );
        set.spawn(
            async move {
                let result = shared.probe(index).await;
                shared.record_probe(index, &result);
                result
            }
            .instrument(span),
        );
    }
    let mut results = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(result) = joined {
            results.push(result);
        }
    }
    results
}

/// The background prober: sleeps until the earliest due probe (or until woken because an
/// endpoint went down), probes what is due, until the pool is dropped.
async fn prober(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        let earliest = shared
            .members
            .iter()
            .map(|m| m.state().next_probe)
            .min()
            .unwrap_or_else(|| Instant::now() + shared.config.probe_interval);
        tokio::select! {
            _ = tokio::time::sleep_until(earliest.into()) => {}
            _ = shared.wake.notified() => continue,
            _ = stopped.changed() => return,
        }
        if *stopped.borrow() {
            return;
        }
        probe_all(shared.clone(), Some(Instant::now())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_max_with_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            jitter: 0.2,
        };
        for _ in 0..100 {
            let d1 = b.delay(1).as_secs_f64();
            assert!((0.08..=0.12).contains(&d1), "{d1}");
            let d3 = b.delay(3).as_secs_f64();
            assert!((0.32..=0.48).contains(&d3), "{d3}");
            let d20 = b.delay(20).as_secs_f64();
            assert!((1.6..=2.4).contains(&d20), "{d20}");
        }
        let fixed = Backoff { jitter: 0.0, ..b };
        assert_eq!(fixed.delay(2), Duration::from_millis(200));
        assert_eq!(fixed.delay(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn pool_is_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Pool>();
        send_sync::<Error>();
    }

    #[test]
    fn config_is_checked() {
        let e = Pool::connect(PoolConfig::new(Vec::<String>::new())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Triton configuration, endpoints: no endpoint given"
        );
        let e = Pool::connect(PoolConfig::new(["a:1", "grpc://a:1"])).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let mut c = PoolConfig::new(["a:1"]);
        c.timeout = Duration::ZERO;
        assert!(
            Pool::connect(c)
                .unwrap_err()
                .to_string()
                .contains("timeout")
        );
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_needs_the_feature() {
        let e = Pool::connect(PoolConfig::new(["grpcs://a:1"])).unwrap_err();
        assert!(matches!(e, Error::TlsUnsupported { .. }), "{e}");
    }

    #[test]
    fn tls_settings_need_a_tls_endpoint() {
        let mut c = PoolConfig::new(["grpc://127.0.0.1:1"]);
        c.tls = Some(TlsConfig::default());
        let e = Pool::connect(c).unwrap_err();
        assert!(e.to_string().contains("use grpcs://"), "{e}");
    }
}
