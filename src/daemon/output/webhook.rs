//! The webhook output: each event is POSTed as JSON; a 2xx answer acknowledges it.
//!
//! Any other status, a timeout or a transport error is a failed attempt: the worker retries the
//! same event (events stay in order) with backoff. Credentials in the URL (`user:pass@`) are
//! removed from it and sent as HTTP basic authentication; they, like header values, never appear
//! in logs or errors.

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;

use crate::daemon::outbox::Pending;
use crate::daemon::output::worker::{SendError, SyncOutput};
use crate::daemon::output::{DEFAULT_WEBHOOK_TIMEOUT, WebhookConfig};
use crate::daemon::secret::redact_url;

/// Bytes of an error response body quoted in the log.
const BODY_SNIPPET: u64 = 200;

/// A webhook URL split into what is sent and what is shown.
#[derive(Clone)]
pub(crate) struct Target {
    /// The URL without credentials.
    url: String,
    /// `Basic ...` from the URL's credentials.
    basic_auth: Option<String>,
}

impl Target {
    /// Parses an `http(s)://` URL; the error message never contains credentials.
    pub(crate) fn parse(url: &str) -> Result<Target, String> {
        let shown = redact_url(url);
        let uri: ureq::http::Uri = url
            .parse()
            .map_err(|e| format!("{shown:?} is not a valid URL: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(format!(
                    "{shown:?}: only http:// and https:// URLs are supported"
                ));
            }
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{shown:?} has no host"))?;
        let (userinfo, host) = match authority.as_str().rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, authority.as_str()),
        };
        if host.is_empty() {
            return Err(format!("{shown:?} has no host"));
        }
        let basic_auth = userinfo.map(|userinfo| {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            let credentials = format!("{}:{}", decode(user), decode(pass));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(credentials)
            )
        });
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!("{}://{host}{path}", uri.scheme_str().unwrap_or("http"));
        Ok(Target { url, basic_auth })
    }

    /// Whether the URL carried `user[:password]@` (sent as basic authentication).
    pub(crate) fn has_credentials(&self) -> bool {
        self.basic_auth.is_some()
    }
}

/// POSTs events to one URL.
pub(crate) struct WebhookOutput {
    agent: ureq::Agent,
    target: Target,
    headers: Vec<(String, String)>,
}

impl WebhookOutput {
    /// A sender for `config` (validated by [`crate::daemon::output::Outputs::new`]).
    pub(crate) fn new(config: &WebhookConfig) -> Result<WebhookOutput, String> {
        let target = Target::parse(config.url.expose())?;
        let timeout = config.timeout.unwrap_or(DEFAULT_WEBHOOK_TIMEOUT);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("clipfilterd/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let headers = config
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect();
        Ok(WebhookOutput {
            agent,
            target,
            headers,
        })
    }

    /// The request timeout in effect.
    pub(crate) fn timeout(config: &WebhookConfig) -> Duration {
        config.timeout.unwrap_or(DEFAULT_WEBHOOK_TIMEOUT)
    }

    fn post(&self, event: &Pending) -> Result<(), SendError> {
        let mut request = self
            .agent
            .post(&self.target.url)
            .header("Content-Type", "application/json");
        if let Some(auth) = &self.target.basic_auth {
            request = request.header("Authorization", auth);
        }
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let mut response = request
            .send(event.payload.as_bytes())
            .map_err(|e| SendError(format!("POST {}: {e}", self.target.url)))?;
        let status = response.status();
        if status.is_success() {
            // The whole answer, or it does not count: a body cut short (fewer bytes than its
            // Content-Length, then the connection closed) is a failed delivery. The request
            // timeout bounds the read.
            return std::io::copy(&mut response.body_mut().as_reader(), &mut std::io::sink())
                .map(drop)
                .map_err(|e| {
                    SendError(format!(
                        "POST {}: HTTP {status} with an incomplete answer: {e}",
                        self.target.url
                    ))
                });
        }
        let mut snippet = Vec::new();
        let _ = response
            .body_mut()
            .as_reader()
            .take(BODY_SNIPPET)
            .read_to_end(&mut snippet);
        let body = String::from_utf8_lossy(&snippet);
        let body: String = body
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        Err(SendError(format!(
            "POST {}: HTTP {status}: {:?}",
            self.target.url,
            body.trim()
        )))
    }
}

impl SyncOutput for WebhookOutput {
    fn max_batch(&self) -> usize {
        // One request per event, each acknowledged before the next is sent.
        1
    }

    fn send(&mut self, batch: &[Pending]) -> Result<(), (usize, SendError)> {
        for (i, event) in batch.iter().enumerate() {
            self.post(event).map_err(|e| (i, e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_become_basic_auth() {
        let t = Target::parse("https://al%40ice:p%3Ass@example.com:8443/hook?x=1").unwrap();
        assert_eq!(t.url, "https://example.com:8443/hook?x=1");
        let expected = base64::engine::general_purpose::STANDARD.encode("al@ice:p:ss");
        assert_eq!(
            t.basic_auth.as_deref(),
            Some(format!("Basic {expected}").as_str())
        );
        let t = Target::parse("http://127.0.0.1:9/").unwrap();
        assert_eq!(
            (t.url.as_str(), t.basic_auth),
            ("http://127.0.0.1:9/", None)
        );
    }

    #[test]
    fn bad_urls_are_refused_without_leaking() {
        for url in [
            "ftp://u:secretpw@h/",
            "not a url",
            "http://secretpw@/x",
            "/relative",
        ] {
            let err = Target::parse(url)
                .err()
                .unwrap_or_else(|| panic!("{url} accepted"));
            assert!(!err.contains("secretpw"), "{err}");
        }
    }
}
