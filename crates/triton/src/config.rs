//! What a [`crate::Pool`] is told: endpoints, timeouts, backoff, required models, TLS.

use std::path::PathBuf;
use std::time::Duration;

use crate::address::Address;
use crate::error::{Error, Result};
use crate::metadata::ModelSpec;

/// Exponential backoff with jitter for probing a down endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Growth per further failure.
    pub multiplier: f64,
    /// Random spread, a fraction of the delay (0.2: ±20 %), so that clients do not probe in step.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before the next probe after `failures` consecutive failures (at least 1).
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(64) as i32;
        let base = (self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp))
            .min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
        Duration::from_secs_f64((base * factor).clamp(0.0, self.max.as_secs_f64() * (1.0 + jitter)))
    }
}

/// TLS settings for `grpcs://` endpoints (needs the crate's `tls` feature). Without them, TLS
/// endpoints are verified against the system's root certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file of the certificate authority that signed the servers' certificates.
    pub ca_certificate: Option<PathBuf>,
    /// PEM files of the client's certificate and key, for mutual TLS.
    pub client_certificate: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// The name to verify in the servers' certificates, when it is not the endpoints' host.
    pub domain: Option<String>,
}

/// A model the pool requires on every endpoint: ready, and (when `spec` is given) matching the
/// local model. An endpoint is ready only when all of them are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCheck {
    pub name: String,
    pub spec: Option<ModelSpec>,
}

/// How to reach the servers. [`PoolConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// `grpc://host:port`, `grpcs://host:port` (TLS) or `host:port` (port 8001 when left out).
    pub endpoints: Vec<String>,
    /// Longest time one call takes in all, failing over included (default 5 s).
    pub timeout: Duration,
    /// Longest TCP connect (default 2 s).
    pub connect_timeout: Duration,
    /// Longest health check (default 2 s).
    pub probe_timeout: Duration,
    /// How often ready endpoints are checked (default 5 s).
    pub probe_interval: Duration,
    /// When down endpoints are probed again.
    pub backoff: Backoff,
    /// Models every endpoint must have ready (and matching, when a spec is given).
    pub models: Vec<ModelCheck>,
    /// For `grpcs://` endpoints; refused for plain ones.
    pub tls: Option<TlsConfig>,
    /// Largest gRPC message either way (default 256 MiB; a batch of 32 float32 224x224 images is 19 MiB).
    pub max_message_bytes: usize,
}

impl PoolConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        PoolConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_secs(5),
            backoff: Backoff::default(),
            models: Vec::new(),
            tls: None,
            max_message_bytes: 256 << 20,
        }
    }

    /// Requires `name` on every endpoint, checked against `spec` when given.
    pub fn model(mut self, name: impl Into<String>, spec: Option<ModelSpec>) -> Self {
        self.models.push(ModelCheck {
            name: name.into(),
            spec,
        });
        self
    }

    pub(crate) fn validate(&self) -> Result<Vec<Address>> {
        if self.endpoints.is_empty() {
            return Err(Error::config("endpoints", "no endpoint given"));
        }
        for (field, value) in [
            ("timeout", self.timeout),
            ("connect_timeout", self.connect_timeout),
            ("probe_timeout", self.probe_timeout),
            ("probe_interval", self.probe_interval),
            ("backoff.initial", self.backoff.initial),
        ] {
            if value.is_zero() {
                return Err(Error::config(field, "must be longer than 0"));
            }
        }
        if self.backoff.max < self.backoff.initial {
            return Err(Error::config(
                "backoff.max",
                "must not be shorter than backoff.initial",
            ));
        }
        if !(self.backoff.multiplier >= 1.0 && self.backoff.multiplier.is_finite()) {
            return Err(Error::config("backoff.multiplier", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.backoff.jitter) {
            return Err(Error::config("backoff.jitter", "must be between 0 and 1"));
        }
        if self.max_message_bytes < 1024 {
            return Err(Error::config("max_message_bytes", "must be at least 1024"));
        }
        let addresses = self
            .endpoints
            .iter()
            .map(|e| Address::parse(e))
            .collect::<Result<Vec<_>>>()?;
        for (i, a) in addresses.iter().enumerate() {
            if addresses[..i].iter().any(|b| b.uri == a.uri) {
                return Err(Error::config(
                    format!("endpoint '{}'", a.name),
                    "listed twice",
                ));
            }
        }
        Ok(addresses)
    }
}
