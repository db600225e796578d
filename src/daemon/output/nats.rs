//! The NATS JetStream output: each event is published on a subject built from a template
//! (`clipfilter.{pipeline}.{label}`) with the event id as `Nats-Msg-Id`; the stream's publish
//! acknowledgement acknowledges it.
//!
//! ```toml
//! [[output]]
//! name = "fleet"
//! type = "nats"
//! servers = ["nats://nats1:4222", "nats://nats2:4222"]
//! subject = "clipfilter.{pipeline}.{label}"   # the default
//! credentials = "/etc/clipfilter/nats.creds"  # optional: a NATS credentials file (JWT + nkey)
//! # or: token = "...", or username = "..." with password = "..."
//! tls = false                                  # true: TLS (also implied by tls:// servers)
//! ca_file = "ca.pem"                           # optional, with tls
//! ack_timeout = "5s"                           # longest wait for the stream's acknowledgement
//! ```
//!
//! A stream must capture the subjects (e.g. `nats stream add CLIPFILTER --subjects
//! 'clipfilter.>' --dupe-window 2m`); without one the server answers "no responders" and the
//! events stay in the outbox, retried with backoff, until it exists.
//!
//! Delivery is the outbox's: the worker sends the oldest pending events in order, up to
//! [`MAX_BATCH`] at a time with their publishes pipelined, waits for each acknowledgement in
//! order and deletes only what was acknowledged. After any failure the connection is dropped and
//! the unacknowledged events are sent again after a backoff. A retry of an event the stream took
//! but whose acknowledgement was lost carries the same `Nats-Msg-Id`, so the stream drops it as
//! a duplicate: every event is stored exactly once as long as retries come within the stream's
//! duplicate window (2 minutes by default), across broker restarts and daemon crashes alike.
//!
//! The client runs on a small tokio runtime owned by the output's worker thread.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use serde::Deserialize;

use crate::daemon::outbox::Pending;
use crate::daemon::output::worker::{SendError, SyncOutput};
use crate::daemon::secret::Secret;

/// Default subject template.
pub const DEFAULT_SUBJECT: &str = "clipfilter.{pipeline}.{label}";
/// Default wait for a publish acknowledgement.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Default connection timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most events published before their acknowledgements are awaited.
pub const MAX_BATCH: usize = 256;

/// `type = "nats"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Unique output name.
    pub name: String,
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); the client connects to one and
    /// moves to another when it fails.
    pub servers: Vec<String>,
    /// Subject template; `{pipeline}` and `{label}` are replaced by the event's (with `.`,
    /// spaces, `*`, `>` turned into `_`, so each stays one subject token).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// A NATS credentials file (user JWT and nkey seed).
    pub credentials: Option<PathBuf>,
    /// Token authentication (never logged).
    pub token: Option<Secret>,
    /// User name, with `password`.
    pub username: Option<String>,
    /// Password (never logged).
    pub password: Option<Secret>,
    /// Require TLS.
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the certificate authority to trust with TLS (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// Longest wait for the stream's acknowledgement of a publish (default 5s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub ack_timeout: Option<Duration>,
    /// First retry delay (default 1s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub retry_initial: Option<Duration>,
    /// Longest retry delay (default 60s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub retry_max: Option<Duration>,
    /// Bound on pending events (default 100000).
    pub max_pending: Option<u64>,
}

fn default_subject() -> String {
    DEFAULT_SUBJECT.to_owned()
}

impl NatsConfig {
    /// Checks the output's own fields; errors name the sub-field and never hold a secret.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if self.servers.is_empty() {
            return Err(("servers", "give at least one server URL".into()));
        }
        for s in &self.servers {
            let url = s.trim();
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|p| url.starts_with(p));
            if url.is_empty() || (url.contains("://") && !scheme_ok) {
                return Err((
                    "servers",
                    format!("{url:?}: expected nats://host:port or tls://host:port"),
                ));
            }
        }
        let probe = subject(&self.subject, "p", "l");
        if self.subject.trim().is_empty()
            || probe.split('.').any(|t| t.is_empty())
            || probe.contains([' ', '*', '>'])
        {
            return Err((
                "subject",
                format!(
                    "{:?} is not a NATS subject (tokens separated by dots, no spaces or wildcards)",
                    self.subject
                ),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(("password", "a password needs a username".into()));
        }
        let methods = [
            self.credentials.is_some(),
            self.token.is_some(),
            self.username.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err((
                "credentials",
                "use one of credentials, token or username/password".into(),
            ));
        }
        if self.ca_file.is_some() && !self.tls {
            return Err(("ca_file", "only used with tls = true".into()));
        }
        if self.ack_timeout.is_some_and(|t| t.is_zero()) {
            return Err(("ack_timeout", "must be greater than zero".into()));
        }
        // Added to the clock (and doubled for the wait): centuries would overflow it.
        if self
            .ack_timeout
            .is_some_and(|t| t > Duration::from_secs(24 * 3600))
        {
            return Err(("ack_timeout", "must be at most 24h".into()));
        }
        Ok(())
    }
}

/// The subject of an event: the template with `{pipeline}` and `{label}` filled in, each made
/// one subject token.
pub fn subject(template: &str, pipeline: &str, label: &str) -> String {
    let token = |s: &str| {
        let t: String = s
            .chars()
            .map(|c| match c {
                '.' | '*' | '>' | ' ' | '\t' | '\r' | '\n' => '_',
                c => c,
            })
            .collect();
        if t.is_empty() { "_".to_string() } else { t }
    };
    template
        .replace("{pipeline}", &token(pipeline))
        .replace("{label}", &token(label))
}

/// The NATS output: publishes events to JetStream.
pub(crate) struct NatsOutput {
    config: NatsConfig,
    runtime: tokio::runtime::Runtime,
    /// The connection of the current session; dropped after any failure.
    context: Option<jetstream::Context>,
}

impl NatsOutput {
    /// A sender for `config` (validated); connects on the first send.
    pub(crate) fn new(config: NatsConfig) -> std::io::Result<NatsOutput> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(NatsOutput {
            config,
            runtime,
            context: None,
        })
    }

    fn servers(&self) -> String {
        self.config.servers.join(",")
    }

    async fn connect(config: &NatsConfig) -> Result<jetstream::Context, SendError> {
        let servers = config.servers.join(",");
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("clipfilterd-{}", config.name))
            .connection_timeout(CONNECT_TIMEOUT)
            .require_tls(config.tls)
            // The outbox retries; the client must not buffer and resend on its own.
            .max_reconnects(Some(0));
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some(path) = &config.credentials {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| SendError(format!("credentials file {}: {e}", path.display())))?;
        }
        if let Some(token) = &config.token {
            options = options.token(token.expose().to_owned());
        }
        if let Some(user) = &config.username {
            let password = config.password.as_ref().map_or("", |p| p.expose());
            options = options.user_and_password(user.clone(), password.to_owned());
        }
        let client = tokio::time::timeout(CONNECT_TIMEOUT * 2, options.connect(servers.as_str()))
            .await
            .map_err(|_| SendError(format!("{servers}: connect timed out")))?
            .map_err(|e| SendError(format!("{servers}: connect: {e}")))?;
        let ack_timeout = config.ack_timeout.unwrap_or(DEFAULT_ACK_TIMEOUT);
        Ok(jetstream::ContextBuilder::new()
            .timeout(ack_timeout)
            .build(client))
    }

    /// Publishes `batch` pipelined, then takes the acknowledgements in order.
    async fn publish(
        context: &jetstream::Context,
        config: &NatsConfig,
        servers: &str,
        batch: &[Pending],
    ) -> Result<(), (usize, SendError)> {
        let ack_timeout = config.ack_timeout.unwrap_or(DEFAULT_ACK_TIMEOUT);
        let mut acks = Vec::with_capacity(batch.len());
        for (i, event) in batch.iter().enumerate() {
            let publish = jetstream::message::PublishMessage::build()
                .payload(event.payload.clone().into_bytes().into())
                .message_id(event.event_id.to_string());
            let subject = subject(&config.subject, &event.pipeline, &event.label);
            match context.send_publish(subject, publish).await {
                Ok(ack) => acks.push(ack),
                Err(e) => {
                    // Those sent so far may still be acknowledged.
                    let done = Self::await_acks(acks, ack_timeout, servers).await;
                    let n = done.as_ref().map_or_else(|(n, _)| *n, |()| i);
                    return Err((n, SendError(format!("{servers}: publish: {e}"))));
                }
            }
        }
        Self::await_acks(acks, ack_timeout, servers).await
    }

    async fn await_acks(
        acks: Vec<jetstream::context::PublishAckFuture>,
        ack_timeout: Duration,
        servers: &str,
    ) -> Result<(), (usize, SendError)> {
        for (i, ack) in acks.into_iter().enumerate() {
            match tokio::time::timeout(ack_timeout * 2, ack.into_future()).await {
                Ok(Ok(ack)) => {
                    if ack.duplicate {
                        tracing::debug!(stream = %ack.stream, sequence = ack.sequence, "the stream already had this event (a retry); dropped as a duplicate");
                    }
                }
                Ok(Err(e)) => {
                    return Err((i, SendError(format!("{servers}: acknowledgement: {e}"))));
                }
                Err(_) => {
                    return Err((
                        i,
                        SendError(format!(
                            "{servers}: no acknowledgement within {ack_timeout:?}"
                        )),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl SyncOutput for NatsOutput {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn send(&mut self, batch: &[Pending]) -> Result<(), (usize, SendError)> {
        let _span =
            tracing::debug_span!("nats_publish", output = %self.config.name, events = batch.len())
                .entered();
        let servers = self.servers();
        let config = self.config.clone();
        let existing = self.context.take();
        let result = self.runtime.block_on(async {
            let context = match existing {
                Some(c) => c,
                None => Self::connect(&config).await.map_err(|e| (0, e))?,
            };
            let sent = Self::publish(&context, &config, &servers, batch).await;
            Ok::<_, (usize, SendError)>((context, sent))
        });
        match result {
            Ok((context, Ok(()))) => {
                self.context = Some(context);
                Ok(())
            }
            // After a failure the next attempt starts on a new connection.
            Ok((_, Err(e))) | Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_keep_one_token_per_name() {
        assert_eq!(
            subject(DEFAULT_SUBJECT, "cam1", "white van"),
            "clipfilter.cam1.white_van"
        );
        assert_eq!(
            subject("site.{pipeline}.events.{label}", "a.b", "x*>"),
            "site.a_b.events.x__"
        );
        assert_eq!(subject("x.{label}", "p", ""), "x._");
    }

    fn config(extra: &str) -> Result<(), (&'static str, String)> {
        let text = format!("name = 'n'\nservers = ['nats://127.0.0.1:4222']\n{extra}");
        toml::from_str::<NatsConfig>(&text).unwrap().check()
    }

    #[test]
    fn checks_name_the_field() {
        assert_eq!(config(""), Ok(()));
        assert_eq!(config("subject = 'a..{label}'").unwrap_err().0, "subject");
        assert_eq!(config("subject = 'a.*.{label}'").unwrap_err().0, "subject");
        assert_eq!(config("password = 'x'").unwrap_err().0, "password");
        assert_eq!(
            config("token = 't'\nusername = 'u'").unwrap_err().0,
            "credentials"
        );
        assert_eq!(config("ca_file = 'ca.pem'").unwrap_err().0, "ca_file");
        assert_eq!(
            config("ack_timeout = '1000h'").unwrap_err().0,
            "ack_timeout"
        );
        let none = toml::from_str::<NatsConfig>("name = 'n'\nservers = []")
            .unwrap()
            .check();
        assert_eq!(none.unwrap_err().0, "servers");
        let bad = toml::from_str::<NatsConfig>("name = 'n'\nservers = ['http://x:1']")
            .unwrap()
            .check();
        assert_eq!(bad.unwrap_err().0, "servers");
    }
}
