//! The MQTT output: each event is published with QoS 1 on `{prefix}/{pipeline}/{label}`; the
//! broker's PUBACK for that packet acknowledges it.
//!
//! The worker keeps up to [`WINDOW`] events in flight on one connection, in outbox order, and maps
//! each packet id to its outbox sequence number: rumqttc reports `Outgoing::Publish(pkid)` in the
//! order the publishes were requested, and `Incoming::PubAck(pkid)` when the broker took one.
//!
//! The outbox, not rumqttc, is the source of truth: on any connection error the client is thrown
//! away (with it rumqttc's own replay state), and after a backoff a new connection resends every
//! unacknowledged event from the oldest, in order. A broker that took an event but whose PUBACK was
//! lost gets it again (at-least-once; the event id tells duplicates apart).
//!
//! With `tls = true` the connection uses rustls (ring provider) and trusts `ca_file` or, without
//! it, the system's certificate authorities; the broker's certificate must name `host`.
//!
//! Pipeline and label names are used as topic levels with `/`, `+`, `#` and NUL replaced by `_`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, select};
use rumqttc::{Client, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS};

use crate::daemon::outbox::Pending;
use crate::daemon::output::worker::{Retry, SendError, WorkerCtx};
use crate::daemon::output::{DEFAULT_CLIENT_ID, MqttConfig};
use crate::error::{Error, Result};

/// Most events published and not yet acknowledged.
pub const WINDOW: usize = 64;

/// Longest time a stopping worker waits for its connection thread.
pub(crate) const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT_SECS: u64 = 5;
const MAX_PACKET: usize = 256 * 1024;

/// The topic of an event: `{prefix}/{pipeline}/{label}` (no prefix level when it is empty).
pub fn topic(prefix: &str, pipeline: &str, label: &str) -> String {
    let level = |s: &str| s.replace(['/', '+', '#', '\0'], "_");
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        format!("{}/{}", level(pipeline), level(label))
    } else {
        format!("{prefix}/{}/{}", level(pipeline), level(label))
    }
}

/// The client id used for `config`: `client_id`, else `clipfilterd-{output name}`.
pub fn client_id(config: &MqttConfig) -> String {
    config
        .client_id
        .clone()
        .unwrap_or_else(|| format!("{DEFAULT_CLIENT_ID}-{}", config.name))
}

/// The TLS settings of `config`, read once when delivery starts (`None` without `tls`). Fails
/// when `ca_file` cannot be read or holds no certificate.
pub(crate) fn tls_config(config: &MqttConfig) -> Result<Option<Arc<rustls::ClientConfig>>> {
    if !config.tls {
        return Ok(None);
    }
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    Error::invalid(format!("CA file {}", path.display()), e.to_string())
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(Error::invalid(
                    format!("CA file {}", path.display()),
                    "no usable PEM certificate in it",
                ));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(output = %config.name, error = %e, "system CA certificates");
            }
            roots.add_parsable_certificates(native.certs);
            if roots.is_empty() {
                return Err(Error::invalid(
                    format!("output {:?}", config.name),
                    "tls = true but no system CA certificates were found; set ca_file",
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::invalid(format!("output {:?}", config.name), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(tls)))
}

fn options(config: &MqttConfig, tls: Option<&Arc<rustls::ClientConfig>>) -> MqttOptions {
    let mut options = MqttOptions::new(client_id(config), config.host.clone(), config.port);
    options
        .set_keep_alive(config.keep_alive.unwrap_or(DEFAULT_KEEP_ALIVE))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET, MAX_PACKET);
    if let Some(tls) = tls {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::clone(tls)),
        ));
    }
    if let Some(user) = &config.username {
        let password = config.password.as_ref().map_or("", |p| p.expose());
        options.set_credentials(user.clone(), password.to_owned());
    }
    options
}

enum SessionEnd {
    Stop,
    Failed(SendError),
}

/// The worker loop of an MQTT output.
pub(crate) fn run(ctx: WorkerCtx, config: MqttConfig, tls: Option<Arc<rustls::ClientConfig>>) {
    let mut retry = Retry::new(&ctx);
    let scheme = if tls.is_some() { "mqtts" } else { "mqtt" };
    let server = format!("{scheme}://{}:{}", config.host, config.port);
    while !ctx.stopping() {
        let (client, mut connection) = Client::new(options(&config, tls.as_ref()), WINDOW + 8);
        let mut network = rumqttc::NetworkOptions::new();
        network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
        connection.eventloop.set_network_options(network);
        let (events_tx, events) = crossbeam_channel::unbounded();
        // The connection thread drives rumqttc's event loop and forwards what happens; it ends
        // at the first error (no automatic reconnection: this loop decides) or when the client
        // is dropped.
        let driver = std::thread::Builder::new()
            .name(format!("mqtt-{}", ctx.name))
            .spawn(move || {
                while let Ok(notification) = connection.recv() {
                    let failed = notification.is_err();
                    if events_tx.send(notification).is_err() || failed {
                        break;
                    }
                }
            });
        let driver = match driver {
            Ok(handle) => handle,
            Err(e) => {
                if !retry.failed(&ctx, &SendError(format!("cannot start MQTT thread: {e}"))) {
                    break;
                }
                continue;
            }
        };
        let end = session(&ctx, &config, &server, &client, &events, &mut retry);
        if matches!(end, SessionEnd::Stop) {
            let _ = client.try_disconnect();
        }
        drop(client);
        // Wait (bounded) for the connection thread to end: it does once the client is gone.
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while events.recv_deadline(deadline).is_ok() {}
        if driver.is_finished() {
            let _ = driver.join();
        } else {
            tracing::warn!(output = %ctx.name, "MQTT connection thread did not stop in time");
        }
        match end {
            SessionEnd::Stop => break,
            SessionEnd::Failed(error) => {
                if !retry.failed(&ctx, &error) {
                    break;
                }
            }
        }
    }
    ctx.stopped();
}

fn failed(server: &str, error: &ConnectionError) -> SessionEnd {
    SessionEnd::Failed(SendError(format!("{server}: {error}")))
}

/// One connection: wait for CONNACK, then publish and collect acknowledgements until an error
/// or a stop.
fn session(
    ctx: &WorkerCtx,
    config: &MqttConfig,
    server: &str,
    client: &Client,
    events: &Receiver<Result<Event, ConnectionError>>,
    retry: &mut Retry,
) -> SessionEnd {
    loop {
        select! {
            recv(events) -> message => match message {
                Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return failed(server, &e),
                Err(_) => return SessionEnd::Failed(SendError(format!("{server}: connection closed"))),
            },
            recv(ctx.stop) -> _ => return SessionEnd::Stop,
        }
    }
    tracing::debug!(output = %ctx.name, server, "connected");

    let mut window = Window::default();
    let mut delivered_any = false;
    loop {
        let room = WINDOW.saturating_sub(window.requested.len() + window.in_flight.len());
        if room > 0 {
            let batch: Vec<Pending> = match ctx.outbox.peek(&ctx.name, window.last_sent, room) {
                Ok(batch) => batch,
                Err(e) => return SessionEnd::Failed(SendError(e.to_string())),
            };
            for event in batch {
                let topic = topic(&config.topic_prefix, &event.pipeline, &event.label);
                let payload = event.payload.into_bytes();
                if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, config.retain, payload)
                {
                    return SessionEnd::Failed(SendError(format!("{server}: publish: {e}")));
                }
                window.requested.push_back(event.seq);
                window.last_sent = event.seq;
            }
        }
        select! {
            recv(events) -> message => {
                let Ok(message) = message else {
                    return SessionEnd::Failed(SendError(format!("{server}: connection closed")));
                };
                let mut end = window.handle(message, server);
                // Take everything already waiting, to acknowledge it in one transaction.
                while end.is_none() {
                    match events.try_recv() {
                        Ok(message) => end = window.handle(message, server),
                        Err(_) => break,
                    }
                }
                if !window.acked.is_empty() {
                    match ctx.acked(&window.acked) {
                        Ok(()) => {
                            window.acked.clear();
                            if !delivered_any {
                                delivered_any = true;
                                retry.succeeded(ctx);
                            }
                        }
                        // Kept, and deleted with the next acknowledgements; this output
                        // backs off meanwhile (they are not published again in this session).
                        Err(e) => {
                            if !retry.failed(ctx, &e) {
                                return SessionEnd::Stop;
                            }
                        }
                    }
                }
                if let Some(end) = end {
                    return end;
                }
            },
            recv(ctx.wake) -> _ => {},
            recv(ctx.stop) -> _ => return SessionEnd::Stop,
        }
    }
}

/// The publishes of one session that the broker has not acknowledged yet.
#[derive(Default)]
struct Window {
    /// Sequence numbers handed to rumqttc and not yet given a packet id, in order.
    requested: VecDeque<i64>,
    /// Packet id -> outbox sequence number, for publishes on the wire.
    in_flight: HashMap<u16, i64>,
    /// Highest sequence number handed to rumqttc in this session.
    last_sent: i64,
    /// Sequence numbers acknowledged since the last outbox update.
    acked: Vec<i64>,
}

impl Window {
    fn handle(
        &mut self,
        message: Result<Event, ConnectionError>,
        server: &str,
    ) -> Option<SessionEnd> {
        match message {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                if let Some(seq) = self.requested.pop_front() {
                    self.in_flight.insert(pkid, seq);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(seq) = self.in_flight.remove(&ack.pkid) {
                    self.acked.push(seq);
                }
            }
            Ok(_) => {}
            Err(e) => return Some(failed(server, &e)),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_levels_without_wildcards() {
        assert_eq!(
            topic("clipfilter", "cam1", "white van"),
            "clipfilter/cam1/white van"
        );
        assert_eq!(topic("home/clip/", "a/b", "x+#"), "home/clip/a_b/x__");
        assert_eq!(topic("", "cam", "l"), "cam/l");
    }
}
