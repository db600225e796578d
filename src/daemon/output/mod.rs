//! Where events go: configuration of the `[[output]]` tables and the senders behind them.
//!
//! ```toml
//! [[output]]
//! name = "log"            # unique; pipelines list the outputs their events go to
//! type = "jsonl"
//! path = "-"              # "-" = stdout, else a file (appended, fsynced before acknowledging)
//!
//! [[output]]
//! name = "alerts"
//! type = "webhook"
//! url = "https://example.com/hook"
//! headers = { Authorization = "Bearer xyz" }
//! timeout = "5s"
//!
//! [[output]]
//! name = "home-assistant"
//! type = "mqtt"
//! host = "127.0.0.1"
//! port = 1883
//! topic_prefix = "clipfilter"    # topic = {prefix}/{pipeline}/{label}
//! client_id = "clipfilterd"      # default: clipfilterd-{name}
//! username = "ha"                # optional, with password
//! password = "..."
//! retain = false
//! tls = false                    # true: MQTT over TLS (rustls); ca_file = "ca.pem" to trust
//! keep_alive = "30s"
//!
//! [[output]]
//! name = "fleet"
//! type = "nats"                  # NATS JetStream, see [`nats`]
//! servers = ["nats://127.0.0.1:4222"]
//! subject = "clipfilter.{pipeline}.{label}"
//! username = "camhost7"          # optional, with password; or token = "...", or
//! password = "..."               # credentials = "nats.creds" (JWT + nkey); tls = true, ca_file
//! ```
//!
//! Every output also takes `retry_initial` (default `"1s"`), `retry_max` (default `"60s"`) and
//! `max_pending` (default 100000, see [`crate::daemon::outbox`] for what happens when full).
//!
//! Parsing gives [`OutputConfig`] values (raw, as written); [`Outputs::new`] validates them into
//! the set that [`crate::daemon::delivery::Delivery::start`] runs. Secrets (passwords, header
//! values, credentials in URLs) are held in [`Secret`] and never appear in `Debug` output or logs.
//!
//! Each kind has its module ([`jsonl`], [`webhook`], [`mqtt`]); what their worker threads share
//! (context, retries, the loop of the outputs that acknowledge synchronously) is in `worker`.

pub mod jsonl;
pub mod mqtt;
pub mod nats;
pub mod webhook;
pub(crate) mod worker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::daemon::outbox::DEFAULT_MAX_PENDING;
use crate::daemon::secret::{Secret, redact_url};
use clipfilter::error::{Error, Location, Result};

/// Default first retry delay.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Default longest retry delay.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
/// Default webhook request timeout.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest `retry_max` and `timeout`: waits are added to the clock, which centuries would
/// overflow.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Default MQTT port.
pub const DEFAULT_MQTT_PORT: u16 = 1883;
/// Default MQTT topic prefix.
pub const DEFAULT_TOPIC_PREFIX: &str = "clipfilter";
/// Default MQTT client id.
pub const DEFAULT_CLIENT_ID: &str = "clipfilterd";

/// Settings every output has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay after a failed attempt.
    pub initial: Duration,
    /// Longest delay between attempts.
    pub max: Duration,
}

/// One `[[output]]` table as written in the daemon configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum OutputConfig {
    /// `type = "jsonl"`: one JSON object per line on stdout or appended to a file.
    Jsonl(JsonlConfig),
    /// `type = "webhook"`: HTTP POST of the event JSON.
    Webhook(WebhookConfig),
    /// `type = "mqtt"`: MQTT publish (QoS 1) of the event JSON.
    Mqtt(MqttConfig),
    /// `type = "nats"`: NATS JetStream publish (acknowledged, the event id as `Nats-Msg-Id`).
    Nats(nats::NatsConfig),
}

/// `type = "jsonl"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// Unique output name.
    pub name: String,
    /// `"-"` for stdout, else a file appended to (created if missing, fsynced before each ack).
    pub path: PathBuf,
    /// First retry delay (default 1s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub retry_initial: Option<Duration>,
    /// Longest retry delay (default 60s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub retry_max: Option<Duration>,
    /// Bound on pending events (default 100000).
    pub max_pending: Option<u64>,
}

/// `type = "webhook"`.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Unique output name.
    pub name: String,
    /// `http://` or `https://` URL the event is POSTed to. `user:password@` in it becomes HTTP
    /// basic authentication.
    pub url: Secret,
    /// Extra request headers (values are secrets: never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// Timeout of one request, connection included (default 5s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub timeout: Option<Duration>,
    /// First retry delay (default 1s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub retry_initial: Option<Duration>,
    /// Longest retry delay (default 60s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub retry_max: Option<Duration>,
    /// Bound on pending events (default 100000).
    pub max_pending: Option<u64>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("name", &self.name)
            .field("url", &redact_url(self.url.expose()))
            .field("headers", &self.headers)
            .field("timeout", &self.timeout)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .field("max_pending", &self.max_pending)
            .finish()
    }
}

/// `type = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Unique output name.
    pub name: String,
    /// Broker host name or address.
    pub host: String,
    /// Broker port (default 1883).
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// Topic prefix (default `clipfilter`); the topic is `{prefix}/{pipeline}/{label}`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// MQTT client id (default `clipfilterd`); must be unique per broker.
    pub client_id: Option<String>,
    /// User name, when the broker requires one.
    pub username: Option<String>,
    /// Password (never logged).
    pub password: Option<Secret>,
    /// Publish with the retain flag.
    #[serde(default)]
    pub retain: bool,
    /// Connect with TLS (MQTT over TLS usually listens on port 8883).
    #[serde(default)]
    pub tls: bool,
    /// PEM file of the certificate authorities to trust with `tls` (default: the system's).
    pub ca_file: Option<PathBuf>,
    /// Keep-alive interval (default 30s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub keep_alive: Option<Duration>,
    /// First retry delay (default 1s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub retry_initial: Option<Duration>,
    /// Longest retry delay (default 60s).
    #[serde(default, with = "crate::daemon::duration::option")]
    pub retry_max: Option<Duration>,
    /// Bound on pending events (default 100000).
    pub max_pending: Option<u64>,
}

fn default_mqtt_port() -> u16 {
    DEFAULT_MQTT_PORT
}

fn default_topic_prefix() -> String {
    DEFAULT_TOPIC_PREFIX.to_owned()
}

impl OutputConfig {
    /// The output's name.
    pub fn name(&self) -> &str {
        match self {
            OutputConfig::Jsonl(c) => &c.name,
            OutputConfig::Webhook(c) => &c.name,
            OutputConfig::Mqtt(c) => &c.name,
            OutputConfig::Nats(c) => &c.name,
        }
    }

    /// `"jsonl"`, `"webhook"`, `"mqtt"` or `"nats"`.
    pub fn kind(&self) -> &'static str {
        match self {
            OutputConfig::Jsonl(_) => "jsonl",
            OutputConfig::Webhook(_) => "webhook",
            OutputConfig::Mqtt(_) => "mqtt",
            OutputConfig::Nats(_) => "nats",
        }
    }

    /// Retry delays, defaults filled in.
    pub fn retry(&self) -> RetryPolicy {
        let (initial, max) = match self {
            OutputConfig::Jsonl(c) => (c.retry_initial, c.retry_max),
            OutputConfig::Webhook(c) => (c.retry_initial, c.retry_max),
            OutputConfig::Mqtt(c) => (c.retry_initial, c.retry_max),
            OutputConfig::Nats(c) => (c.retry_initial, c.retry_max),
        };
        RetryPolicy {
            initial: initial.unwrap_or(DEFAULT_RETRY_INITIAL),
            max: max.unwrap_or(DEFAULT_RETRY_MAX),
        }
    }

    /// Bound on pending events, default filled in.
    pub fn max_pending(&self) -> u64 {
        match self {
            OutputConfig::Jsonl(c) => c.max_pending,
            OutputConfig::Webhook(c) => c.max_pending,
            OutputConfig::Mqtt(c) => c.max_pending,
            OutputConfig::Nats(c) => c.max_pending,
        }
        .unwrap_or(DEFAULT_MAX_PENDING)
    }

    /// Checks one output's own fields; `field` is its place in the file, such as `output[2]`.
    fn check(&self, config_path: &Path, field: &str) -> Result<()> {
        let err = |sub: &str, message: String| {
            Error::config(
                config_path,
                Location::field(format!("{field}.{sub}")),
                message,
            )
        };
        if self.name().trim().is_empty() {
            return Err(err("name", "an output needs a non-empty name".into()));
        }
        let retry = self.retry();
        if retry.initial.is_zero() {
            return Err(err("retry_initial", "must be greater than zero".into()));
        }
        if retry.max < retry.initial {
            return Err(err(
                "retry_max",
                "must not be shorter than retry_initial".into(),
            ));
        }
        if retry.max > MAX_WAIT {
            return Err(err("retry_max", "must be at most 24h".into()));
        }
        if self.max_pending() == 0 {
            return Err(err("max_pending", "must be at least 1".into()));
        }
        match self {
            OutputConfig::Jsonl(c) => {
                if c.path.as_os_str().is_empty() {
                    return Err(err("path", "use \"-\" for stdout or a file path".into()));
                }
            }
            OutputConfig::Webhook(c) => {
                let target = webhook::Target::parse(c.url.expose()).map_err(|m| err("url", m))?;
                if target.has_credentials()
                    && c.headers
                        .keys()
                        .any(|k| k.eq_ignore_ascii_case("authorization"))
                {
                    return Err(err(
                        "headers",
                        "an `Authorization` header and `user:password@` in the url both authenticate the request (the URL's would replace the header): give one of them".into(),
                    ));
                }
                if c.timeout.is_some_and(|t| t.is_zero()) {
                    return Err(err("timeout", "must be greater than zero".into()));
                }
                if c.timeout.is_some_and(|t| t > MAX_WAIT) {
                    return Err(err("timeout", "must be at most 24h".into()));
                }
                for (name, value) in &c.headers {
                    ureq::http::HeaderName::try_from(name.as_str())
                        .map_err(|e| err("headers", format!("header name {name:?}: {e}")))?;
                    ureq::http::HeaderValue::try_from(value.expose()).map_err(|_| {
                        err(
                            "headers",
                            format!("value of header {name:?} is not a valid header value"),
                        )
                    })?;
                }
            }
            OutputConfig::Mqtt(c) => {
                if c.host.trim().is_empty() {
                    return Err(err("host", "must not be empty".into()));
                }
                if c.port == 0 {
                    return Err(err("port", "must not be 0".into()));
                }
                if c.topic_prefix.contains(['+', '#']) {
                    return Err(err(
                        "topic_prefix",
                        "MQTT wildcards (+, #) are not allowed".into(),
                    ));
                }
                if c.client_id.as_deref().is_some_and(|id| id.is_empty()) {
                    return Err(err("client_id", "must not be empty when given".into()));
                }
                if c.password.is_some() && c.username.is_none() {
                    return Err(err("password", "a password needs a username".into()));
                }
                if c.ca_file.is_some() && !c.tls {
                    return Err(err("ca_file", "only used with tls = true".into()));
                }
                if c.keep_alive.is_some_and(|k| k < Duration::from_secs(1)) {
                    return Err(err("keep_alive", "must be at least 1s".into()));
                }
                if c.keep_alive
                    .is_some_and(|k| k.as_secs() > u64::from(u16::MAX))
                {
                    return Err(err(
                        "keep_alive",
                        "must be at most 65535s (18h12m15s, the MQTT limit)".into(),
                    ));
                }
            }
            OutputConfig::Nats(c) => c.check().map_err(|(sub, m)| err(sub, m))?,
        }
        Ok(())
    }
}

/// The validated set of outputs: unique names, usable URLs and durations.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    outputs: Vec<OutputConfig>,
}

impl Outputs {
    /// Validates `outputs` read from `config_path` (used in error messages).
    pub fn new(config_path: &Path, outputs: Vec<OutputConfig>) -> Result<Outputs> {
        let mut seen = BTreeMap::new();
        for (i, output) in outputs.iter().enumerate() {
            let field = format!("output[{i}]");
            output.check(config_path, &field)?;
            if let Some(first) = seen.insert(output.name().to_owned(), i) {
                return Err(Error::config(
                    config_path,
                    Location::field(format!("{field}.name")),
                    format!(
                        "output name {:?} is already used by output[{first}]",
                        output.name()
                    ),
                ));
            }
        }
        Ok(Outputs { outputs })
    }

    /// Checks that every name in `names` is a configured output; `field` says where the names
    /// were written (e.g. `pipeline[1].outputs`). Call it for each pipeline when validating the
    /// daemon configuration.
    pub fn check_names(&self, config_path: &Path, field: &str, names: &[String]) -> Result<()> {
        for name in names {
            if self.get(name).is_none() {
                let known: Vec<&str> = self.outputs.iter().map(OutputConfig::name).collect();
                return Err(Error::config(
                    config_path,
                    Location::field(field),
                    format!("unknown output {name:?} (configured: {})", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    /// The output called `name`.
    pub fn get(&self, name: &str) -> Option<&OutputConfig> {
        self.outputs.iter().find(|o| o.name() == name)
    }

    /// All outputs in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &OutputConfig> {
        self.outputs.iter()
    }

    /// Number of outputs.
    pub fn len(&self) -> usize {
        self.outputs.len()
    }

    /// True when no output is configured.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        output: Vec<OutputConfig>,
    }

    const EXAMPLE: &str = r#"
[[output]]
name = "log"
type = "jsonl"
path = "-"

[[output]]
name = "alerts"
type = "webhook"
url = "https://user:hunter2@example.com/hook"
headers = { X-Token = "Bearer xyz" }
timeout = "5s"
retry_initial = "500ms"
retry_max = "30s"

[[output]]
name = "home-assistant"
type = "mqtt"
host = "127.0.0.1"
port = 1883
topic_prefix = "clipfilter"
client_id = "clipfilterd"
username = "ha"
password = "s3cret"
retain = false
max_pending = 500
"#;

    fn parse(text: &str) -> std::result::Result<Vec<OutputConfig>, toml::de::Error> {
        toml::from_str::<File>(text).map(|f| f.output)
    }

    #[test]
    fn parses_the_documented_example() {
        let outputs = Outputs::new(Path::new("d.toml"), parse(EXAMPLE).unwrap()).unwrap();
        assert_eq!(outputs.len(), 3);
        let hook = outputs.get("alerts").unwrap();
        assert_eq!(hook.kind(), "webhook");
        assert_eq!(
            hook.retry(),
            RetryPolicy {
                initial: Duration::from_millis(500),
                max: Duration::from_secs(30)
            }
        );
        let log = outputs.get("log").unwrap();
        assert_eq!(
            log.retry(),
            RetryPolicy {
                initial: DEFAULT_RETRY_INITIAL,
                max: DEFAULT_RETRY_MAX
            }
        );
        assert_eq!(log.max_pending(), DEFAULT_MAX_PENDING);
        let OutputConfig::Mqtt(mqtt) = outputs.get("home-assistant").unwrap() else {
            panic!()
        };
        assert_eq!(mqtt.port, 1883);
        assert_eq!(mqtt.password.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(outputs.get("home-assistant").unwrap().max_pending(), 500);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let outputs = parse(EXAMPLE).unwrap();
        let debug = format!("{outputs:?}");
        for secret in ["hunter2", "Bearer xyz", "s3cret", "user:"] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
        assert!(debug.contains("https://***@example.com/hook"), "{debug}");
    }

    #[test]
    fn unknown_fields_and_types_are_refused() {
        let err =
            parse("[[output]]\nname='x'\ntype='jsonl'\npath='-'\ncolour='red'\n").unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        let err = parse("[[output]]\nname='x'\ntype='carrier-pigeon'\n").unwrap_err();
        assert!(err.to_string().contains("carrier-pigeon"), "{err}");
        let err = parse("[[output]]\nname='x'\ntype='webhook'\nurl='http://a/'\ntimeout='5'\n")
            .unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let path = Path::new("clipfilterd.toml");
        let dup = parse("[[output]]\nname='a'\ntype='jsonl'\npath='-'\n[[output]]\nname='a'\ntype='jsonl'\npath='x'\n")
            .unwrap();
        let err = Outputs::new(path, dup).unwrap_err().to_string();
        assert!(
            err.contains("output[1].name") && err.contains("output[0]"),
            "{err}"
        );

        let bad_url =
            parse("[[output]]\nname='a'\ntype='webhook'\nurl='ftp://u:pw@host/x'\n").unwrap();
        let err = Outputs::new(path, bad_url).unwrap_err().to_string();
        assert!(
            err.contains("output[0].url") && !err.contains("pw"),
            "{err}"
        );

        let ca = parse("[[output]]\nname='m'\ntype='mqtt'\nhost='h'\nca_file='ca.pem'\n").unwrap();
        let err = Outputs::new(path, ca).unwrap_err().to_string();
        assert!(err.contains("output[0].ca_file"), "{err}");

        let retry = parse(
            "[[output]]\nname='a'\ntype='jsonl'\npath='-'\nretry_initial='2s'\nretry_max='1s'\n",
        )
        .unwrap();
        let err = Outputs::new(path, retry).unwrap_err().to_string();
        assert!(err.contains("output[0].retry_max"), "{err}");
        let slow = parse(
            "[[output]]\nname='a'\ntype='webhook'\nurl='http://a/'\ntimeout='2562047788015215h'\n",
        )
        .unwrap();
        let err = Outputs::new(path, slow).unwrap_err().to_string();
        assert!(
            err.contains("output[0].timeout") && err.contains("24h"),
            "{err}"
        );

        let outputs = Outputs::new(path, parse(EXAMPLE).unwrap()).unwrap();
        outputs
            .check_names(
                path,
                "pipeline[0].outputs",
                &["log".into(), "alerts".into()],
            )
            .unwrap();
        let err = outputs
            .check_names(path, "pipeline[3].outputs", &["log".into(), "pager".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pipeline[3].outputs") && err.contains("\"pager\""),
            "{err}"
        );
    }
}
