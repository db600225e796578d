//! Event delivery against real endpoints on 127.0.0.1: a tiny_http webhook server, a mosquitto
//! broker, and a child process killed with SIGKILL while events are pending.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clipfilter::matcher::Transition;
use clipfilterd::daemon::delivery::Delivery;
use clipfilterd::daemon::event::Event;
use clipfilterd::daemon::metrics::Metrics;
use clipfilterd::daemon::output::{OutputConfig, Outputs};
use crossbeam_channel::{Receiver, Sender};

use crate::util::{PATIENCE, free_port};

/// Polls `cond` until it holds (for states that have no signal, such as a metric value).
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The outputs of a TOML text of `[[output]]` tables (also used by the NATS tests).
pub(crate) fn outputs(toml_text: &str) -> Outputs {
    #[derive(serde::Deserialize)]
    struct File {
        output: Vec<OutputConfig>,
    }
    let file: File = toml::from_str(toml_text).unwrap();
    Outputs::new(Path::new("test.toml"), file.output).unwrap()
}

/// `n` events of `pipeline`, start and end in turn over three labels (also used by the NATS tests).
pub(crate) fn events(pipeline: &str, n: u64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let state = if i % 2 == 0 {
                Transition::Start
            } else {
                Transition::End
            };
            let mut e = Event::new(pipeline, format!("label {}", i % 3), state, 0.25, 0.5, i);
            e.pts = Some(i as f64 / 25.0);
            e
        })
        .collect()
}

/// Value of one series in the exposition, 0 when absent.
pub(crate) fn metric(metrics: &Metrics, series: &str) -> f64 {
    crate::util::metric_value(&metrics.encode(), series)
}

// ---------------------------------------------------------------- webhook

/// One request the webhook server accepted.
struct Received {
    event: Event,
    content_type: String,
    authorization: Option<String>,
    token: Option<String>,
}

/// A webhook endpoint: answers 500 while `failing`, else 200 and passes the event on.
struct Hook {
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
    failing: Arc<AtomicBool>,
    received: Receiver<Received>,
    failures: Receiver<()>,
}

impl Hook {
    fn start(port: u16, failing: bool) -> Hook {
        let server = Arc::new(tiny_http::Server::http(("127.0.0.1", port)).unwrap());
        let failing = Arc::new(AtomicBool::new(failing));
        let (ok_tx, received) = crossbeam_channel::unbounded();
        let (fail_tx, failures) = crossbeam_channel::unbounded();
        let thread = {
            let server = Arc::clone(&server);
            let failing = Arc::clone(&failing);
            std::thread::spawn(move || serve_hook(&server, &failing, &ok_tx, &fail_tx))
        };
        Hook {
            server,
            thread: Some(thread),
            failing,
            received,
            failures,
        }
    }

    fn next(&self) -> Received {
        self.received
            .recv_timeout(PATIENCE)
            .expect("webhook: no event arrived in time")
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_hook(
    server: &tiny_http::Server,
    failing: &AtomicBool,
    ok: &Sender<Received>,
    fail: &Sender<()>,
) {
    for mut request in server.incoming_requests() {
        let header = |name: &str| {
            request
                .headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_owned())
        };
        let content_type = header("Content-Type").unwrap_or_default();
        let authorization = header("Authorization");
        let token = header("X-Token");
        let mut body = String::new();
        request.as_reader().read_to_string(&mut body).unwrap();
        assert_eq!(request.method(), &tiny_http::Method::Post);
        assert_eq!(request.url(), "/hook?src=clipfilter");
        if failing.load(Ordering::SeqCst) {
            let _ = request.respond(
                tiny_http::Response::from_string("database on fire").with_status_code(500),
            );
            let _ = fail.send(());
        } else {
            let event: Event = serde_json::from_str(&body).unwrap();
            // Hand the event over before answering: the sender deletes it once it sees the 200.
            let _ = ok.send(Received {
                event,
                content_type,
                authorization,
                token,
            });
            let _ =
                request.respond(tiny_http::Response::from_string("thanks").with_status_code(204));
        }
    }
}

fn webhook_config(port: u16) -> String {
    format!(
        r#"
[[output]]
name = "hook"
type = "webhook"
url = "http://alice:s3cret@127.0.0.1:{port}/hook?src=clipfilter"
headers = {{ X-Token = "tok-123" }}
timeout = "5s"
retry_initial = "50ms"
retry_max = "200ms"
"#
    )
}

#[test]
fn webhook_delivers_events_in_order_with_their_fields() {
    let port = free_port();
    let hook = Hook::start(port, false);
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery =
        Delivery::start(state.path(), &outputs(&webhook_config(port)), &metrics).unwrap();
    let sent = events("cam1", 12);
    for e in &sent {
        delivery.submit(e, &["hook"]).unwrap();
    }
    for expected in &sent {
        let got = hook.next();
        assert_eq!(&got.event, expected);
        assert_eq!(got.content_type, "application/json");
        // base64("alice:s3cret")
        assert_eq!(got.authorization.as_deref(), Some("Basic YWxpY2U6czNjcmV0"));
        assert_eq!(got.token.as_deref(), Some("tok-123"));
    }
    assert!(delivery.shutdown(), "workers did not stop cleanly");
    assert!(hook.received.try_recv().is_err(), "an event arrived twice");
    assert_eq!(
        metric(
            &metrics,
            "clipfilter_output_events_delivered_total{output=\"hook\"}"
        ),
        12.0
    );
    assert_eq!(
        metric(
            &metrics,
            "clipfilter_output_events_pending{output=\"hook\"}"
        ),
        0.0
    );
    let outbox = clipfilterd::daemon::outbox::Outbox::open(state.path()).unwrap();
    assert_eq!(outbox.pending("hook"), 0);
}

#[test]
fn webhook_answering_500_then_200_gets_every_event_in_order() {
    let port = free_port();
    let hook = Hook::start(port, true);
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery =
        Delivery::start(state.path(), &outputs(&webhook_config(port)), &metrics).unwrap();
    let sent = events("cam1", 8);
    for e in &sent[..5] {
        delivery.submit(e, &["hook"]).unwrap();
    }
    for _ in 0..3 {
        hook.failures
            .recv_timeout(PATIENCE)
            .expect("no failed attempt");
    }
    for e in &sent[5..] {
        delivery.submit(e, &["hook"]).unwrap();
    }
    assert_eq!(delivery.pending("hook"), 8);
    hook.failing.store(false, Ordering::SeqCst);
    let got: Vec<Event> = (0..8).map(|_| hook.next().event).collect();
    assert_eq!(got, sent, "every event, in order, once");
    assert!(delivery.shutdown());
    assert!(hook.received.try_recv().is_err());
    assert!(
        metric(
            &metrics,
            "clipfilter_output_delivery_failures_total{output=\"hook\"}"
        ) >= 3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "clipfilter_output_events_delivered_total{output=\"hook\"}"
        ),
        8.0
    );
    assert!(!metrics.encode().contains("s3cret"));
}

#[test]
fn webhook_endpoint_down_then_up_gets_every_event_in_order() {
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery =
        Delivery::start(state.path(), &outputs(&webhook_config(port)), &metrics).unwrap();
    let sent = events("door", 6);
    for e in &sent {
        delivery.submit(e, &["hook"]).unwrap();
    }
    let failures = "clipfilter_output_delivery_failures_total{output=\"hook\"}";
    wait_until("failed attempts on a closed port", || {
        metric(&metrics, failures) >= 2.0
    });
    assert_eq!(delivery.pending("hook"), 6);
    let hook = Hook::start(port, false);
    let got: Vec<Event> = (0..6).map(|_| hook.next().event).collect();
    assert_eq!(got, sent);
    assert!(delivery.shutdown());
}

#[test]
fn full_outbox_drops_the_oldest_events_and_counts_them() {
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let config = webhook_config(port) + "max_pending = 5\n";
    let delivery = Delivery::start(state.path(), &outputs(&config), &metrics).unwrap();
    let sent = events("cam1", 8);
    for e in &sent {
        delivery.submit(e, &["hook"]).unwrap();
    }
    assert_eq!(delivery.pending("hook"), 5);
    assert_eq!(
        metric(
            &metrics,
            "clipfilter_output_events_dropped_total{output=\"hook\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "clipfilter_output_events_pending{output=\"hook\"}"
        ),
        5.0
    );
    // After one failed attempt the worker reads the queue afresh: the dropped events are gone.
    let failures = "clipfilter_output_delivery_failures_total{output=\"hook\"}";
    wait_until("a failed attempt", || metric(&metrics, failures) >= 1.0);
    let hook = Hook::start(port, false);
    let got: Vec<Event> = (0..5).map(|_| hook.next().event).collect();
    assert_eq!(got, sent[3..]);
    assert!(delivery.shutdown());
    assert!(hook.received.try_recv().is_err());
}

#[test]
fn unknown_outputs_are_refused_and_nothing_is_written() {
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery = Delivery::start(
        state.path(),
        &outputs(&webhook_config(free_port())),
        &metrics,
    )
    .unwrap();
    let e = &events("cam1", 1)[0];
    let err = delivery.submit(e, &["hook", "pager"]).unwrap_err();
    assert!(err.to_string().contains("\"pager\""), "{err}");
    assert_eq!(delivery.pending("hook"), 0);
    assert!(delivery.shutdown());
}

// ---------------------------------------------------------------- crash safety

const CHILD_STATE: &str = "CLIPFILTER_TEST_CRASH_STATE";
const CHILD_PORT: &str = "CLIPFILTER_TEST_CRASH_PORT";

/// Helper process for [`kill_9_with_pending_events_then_restart_delivers_them_all`]: queues
/// events for an endpoint that is down, says so, and waits to be killed.
#[test]
#[ignore = "helper process, run by kill_9_with_pending_events_then_restart_delivers_them_all"]
fn crash_child() {
    let (Some(state), Some(port)) = (
        std::env::var_os(CHILD_STATE),
        std::env::var(CHILD_PORT).ok(),
    ) else {
        return;
    };
    let metrics = Metrics::new();
    let port: u16 = port.parse().unwrap();
    let delivery =
        Delivery::start(Path::new(&state), &outputs(&webhook_config(port)), &metrics).unwrap();
    for e in events("cam1", 10) {
        delivery.submit(&e, &["hook"]).unwrap();
        println!("QUEUED {}", e.id);
    }
    println!("ALL QUEUED");
    loop {
        std::thread::park();
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_with_pending_events_then_restart_delivers_them_all() {
    let port = free_port();
    let state = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "delivery::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_STATE, state.path())
            .env(CHILD_PORT, port.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut queued = Vec::new();
    for line in BufReader::new(child.0.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints "test delivery::crash_child ... " before the child's first line.
        if let Some((_, id)) = line.split_once("QUEUED ") {
            queued.push(id.parse::<uuid::Uuid>().unwrap());
        }
        if line.ends_with("ALL QUEUED") {
            break;
        }
    }
    assert_eq!(queued.len(), 10, "the child did not queue its events");
    // SIGKILL: no destructor, no flush, no goodbye.
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success());

    let hook = Hook::start(port, false);
    let metrics = Metrics::new();
    let delivery =
        Delivery::start(state.path(), &outputs(&webhook_config(port)), &metrics).unwrap();
    assert_eq!(delivery.pending("hook"), 10);
    let mut first_seen = Vec::new();
    let mut seen = HashSet::new();
    while first_seen.len() < queued.len() {
        let id = hook.next().event.id;
        if seen.insert(id) {
            first_seen.push(id);
        }
    }
    assert_eq!(
        first_seen, queued,
        "every event, in order (duplicates allowed)"
    );
    assert!(delivery.shutdown());
}

// ---------------------------------------------------------------- MQTT

/// A mosquitto broker on 127.0.0.1, killed when dropped (also when a test panics).
struct Broker {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// More configuration lines (another listener).
    extra: String,
}

impl Broker {
    fn start() -> Broker {
        Broker::start_with(String::new())
    }

    fn start_with(extra: String) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        // mosquitto started as root switches to its own user: let it write its persistence file.
        let writable = std::os::unix::fs::PermissionsExt::from_mode(0o777);
        std::fs::set_permissions(dir.path(), writable).unwrap();
        let mut broker = Broker {
            child: None,
            port: free_port(),
            dir,
            extra,
        };
        broker.restart();
        broker
    }

    /// (Re)starts the broker on the same port with the same persistence folder.
    fn restart(&mut self) {
        assert!(self.child.is_none());
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest stderr\n{}",
                self.port,
                self.dir.path().display(),
                self.extra,
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (Debian package mosquitto) must be installed");
        self.child = Some(child);
        let addr = ("127.0.0.1", self.port);
        wait_until("mosquitto to listen", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
    }

    /// Stops the broker gracefully (SIGTERM: it saves its persistence file) and waits for it.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A subscriber on `{prefix}/#` with a persistent session (QoS 1), so that messages published
/// while it reconnects after a broker restart are kept for it.
struct Subscriber {
    client: rumqttc::Client,
    messages: Receiver<(String, Event)>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    fn start(port: u16, prefix: &str) -> Subscriber {
        let mut options = rumqttc::MqttOptions::new("test-subscriber", "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = rumqttc::Client::new(options, 16);
        client
            .subscribe(format!("{prefix}/#"), rumqttc::QoS::AtLeastOnce)
            .unwrap();
        let (tx, messages) = crossbeam_channel::unbounded();
        let (subscribed_tx, subscribed) = crossbeam_channel::bounded(1);
        let thread = std::thread::spawn(move || {
            for notification in connection.iter() {
                match notification {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        let _ = subscribed_tx.try_send(());
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        let event: Event = serde_json::from_slice(&p.payload).unwrap();
                        if tx.send((p.topic.clone(), event)).is_err() {
                            return;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    // The broker is being restarted: rumqttc reconnects on the next iteration.
                    Err(rumqttc::ConnectionError::RequestsDone) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        subscribed.recv_timeout(PATIENCE).expect("no SUBACK");
        Subscriber {
            client,
            messages,
            thread: Some(thread),
        }
    }

    fn next(&self) -> (String, Event) {
        self.messages
            .recv_timeout(PATIENCE)
            .expect("MQTT: no message arrived in time")
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn mqtt_config(port: u16) -> String {
    format!(
        r#"
[[output]]
name = "ha"
type = "mqtt"
host = "127.0.0.1"
port = {port}
topic_prefix = "clipfilter-test"
client_id = "clipfilterd-test"
retry_initial = "50ms"
retry_max = "300ms"
"#
    )
}

#[test]
fn mqtt_publishes_events_in_order_on_pipeline_label_topics() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "clipfilter-test");
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery =
        Delivery::start(state.path(), &outputs(&mqtt_config(broker.port)), &metrics).unwrap();
    let mut sent = events("cam1", 6);
    sent.extend(events("back/yard", 4));
    for e in &sent {
        delivery.submit(e, &["ha"]).unwrap();
    }
    for expected in &sent {
        let (topic, event) = subscriber.next();
        assert_eq!(&event, expected);
        let pipeline = expected.pipeline.replace('/', "_");
        assert_eq!(
            topic,
            format!("clipfilter-test/{pipeline}/{}", expected.label)
        );
    }
    wait_until("PUBACKs to empty the outbox", || {
        delivery.pending("ha") == 0
    });
    assert!(delivery.shutdown());
    assert_eq!(
        metric(
            &metrics,
            "clipfilter_output_events_delivered_total{output=\"ha\"}"
        ),
        10.0
    );
}

#[test]
fn mqtt_broker_restart_with_pending_events_delivers_them_all() {
    let mut broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "clipfilter-test");
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery =
        Delivery::start(state.path(), &outputs(&mqtt_config(broker.port)), &metrics).unwrap();
    let sent = events("cam1", 9);
    for e in &sent[..3] {
        delivery.submit(e, &["ha"]).unwrap();
    }
    for expected in &sent[..3] {
        assert_eq!(&subscriber.next().1, expected);
    }
    wait_until("PUBACKs", || delivery.pending("ha") == 0);

    broker.stop();
    for e in &sent[3..] {
        delivery.submit(e, &["ha"]).unwrap();
    }
    let failures = "clipfilter_output_delivery_failures_total{output=\"ha\"}";
    wait_until("the output to notice the broker is gone", || {
        metric(&metrics, failures) >= 1.0
    });
    assert_eq!(delivery.pending("ha"), 6);
    broker.restart();

    let mut seen: HashSet<uuid::Uuid> = sent[..3].iter().map(|e| e.id).collect();
    let mut first_seen = Vec::new();
    while first_seen.len() < 6 {
        let (_, event) = subscriber.next();
        if seen.insert(event.id) {
            first_seen.push(event);
        }
    }
    assert_eq!(
        first_seen,
        sent[3..],
        "every event, in order (duplicates allowed)"
    );
    wait_until("PUBACKs after the restart", || delivery.pending("ha") == 0);
    assert!(delivery.shutdown());
}

/// Runs `openssl` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate authority `{name}.pem` / `{name}.key` in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subject) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subject,
        ],
    );
}

#[test]
fn mqtt_over_tls_checks_the_broker_certificate() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    make_ca(dir, "ca");
    make_ca(dir, "other-ca");
    std::fs::write(
        dir.join("san.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    );
    // mosquitto started as root runs as its own user: let it read the key.
    for entry in std::fs::read_dir(dir).unwrap() {
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        std::fs::set_permissions(entry.unwrap().path(), mode).unwrap();
    }
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let tls_port = free_port();
    let d = dir.display();
    let broker = Broker::start_with(format!(
        "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n"
    ));
    wait_until("the TLS listener", || {
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_ok()
    });
    // The subscriber uses the plain listener of the same broker.
    let subscriber = Subscriber::start(broker.port, "clipfilter-test");
    let config = format!(
        r#"
[[output]]
name = "secure"
type = "mqtt"
host = "127.0.0.1"
port = {tls_port}
topic_prefix = "clipfilter-test"
client_id = "clipfilterd-secure"
tls = true
ca_file = "{d}/ca.pem"
retry_initial = "50ms"
retry_max = "300ms"

[[output]]
name = "untrusted"
type = "mqtt"
host = "127.0.0.1"
port = {tls_port}
topic_prefix = "clipfilter-test"
client_id = "clipfilterd-untrusted"
tls = true
ca_file = "{d}/other-ca.pem"
retry_initial = "50ms"
retry_max = "300ms"
"#
    );
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery = Delivery::start(state.path(), &outputs(&config), &metrics).unwrap();
    let sent = events("cam1", 3);
    for e in &sent {
        delivery.submit(e, &["secure", "untrusted"]).unwrap();
    }
    for expected in &sent {
        assert_eq!(&subscriber.next().1, expected);
    }
    wait_until("PUBACKs over TLS", || delivery.pending("secure") == 0);
    let failures = "clipfilter_output_delivery_failures_total{output=\"untrusted\"}";
    wait_until("the untrusted broker certificate to be refused", || {
        metric(&metrics, failures) >= 2.0
    });
    assert_eq!(delivery.pending("untrusted"), 3);
    assert!(
        subscriber.messages.try_recv().is_err(),
        "a message came through an untrusted connection"
    );
    assert!(delivery.shutdown());
}

#[test]
fn jsonl_file_gets_one_line_per_event_in_order() {
    let state = tempfile::tempdir().unwrap();
    let path = state.path().join("events.jsonl");
    let config = format!(
        "[[output]]\nname = \"log\"\ntype = \"jsonl\"\npath = \"{}\"\n",
        path.display()
    );
    let metrics = Metrics::new();
    let delivery = Delivery::start(state.path(), &outputs(&config), &metrics).unwrap();
    let sent = events("cam1", 20);
    for e in &sent {
        delivery.submit(e, &["log"]).unwrap();
    }
    wait_until("the lines to be written", || delivery.pending("log") == 0);
    assert!(delivery.shutdown());
    let text = std::fs::read_to_string(&path).unwrap();
    let got: Vec<Event> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, sent);

    // A folder that does not exist is reported when delivery starts, naming the file.
    let bad = "[[output]]\nname = \"log\"\ntype = \"jsonl\"\npath = \"/nonexistent/dir/e.jsonl\"\n";
    let err = Delivery::start(state.path(), &outputs(bad), &metrics).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/dir/e.jsonl"),
        "{err}"
    );
}

// ---------------------------------------------------------------- a full state disk

/// A tmpfs mounted on a folder for the life of the value (unmounted on drop).
pub(crate) struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`; `None`, with the reason
    /// printed, where mounting is not allowed (not root).
    pub(crate) fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(dir.to_path_buf())),
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot mount a tmpfs on {}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }

    /// Writes `name` until the file system is full; returns its path.
    pub(crate) fn fill(&self, name: &str) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join(name);
        let mut file = std::fs::File::create(&path).unwrap();
        for chunk in [64 * 1024, 4096, 512, 1] {
            let zeros = vec![0u8; chunk];
            while file.write_all(&zeros).and_then(|()| file.flush()).is_ok() {}
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The `event_id`s of the daemon's log lines whose message starts with `message`.
fn logged_ids(daemon: &crate::util::daemon::Daemon, message: &str) -> Vec<String> {
    daemon
        .logs(|m| m.starts_with(message))
        .iter()
        .filter_map(|v| v["fields"]["event_id"].as_str().map(String::from))
        .collect()
}

/// Log lines whose message contains `text`.
fn log_count(daemon: &crate::util::daemon::Daemon, text: &str) -> usize {
    daemon.logs(|m| m.contains(text)).len()
}

/// Issue 15, 1: with `state_dir` on a 2 MB tmpfs that fills up, delivered events whose deletion
/// fails are not sent again in a loop, new events are refused loudly (metric, `/status`,
/// `/healthz`, one log line per change), and everything resumes when space returns without
/// losing an event that was accepted.
#[test]
fn full_state_disk_refuses_events_loudly_without_duplicates_and_resumes() {
    use crate::daemon_http::{agent, get};
    use crate::util::daemon::{Daemon, config_head, make_clip};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let Some(tmpfs) = Tmpfs::mount(&state, "2m") else {
        return;
    };
    let clip = dir.path().join("red-green.mp4");
    make_clip(&clip, &[("red", 5), ("green", 5)]);
    let (hook_port, http) = (free_port(), free_port());
    let hook = Hook::start(hook_port, false);
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        r#"{head}{webhook}
[[pipeline]]
name = "clip"
source = "red-green.mp4"
loop = true
interval = "100ms"
prompts = ["red", "green"]
outputs = ["log", "hook"]
"#,
        head = config_head(&state, http),
        webhook = webhook_config(hook_port),
    );
    std::fs::write(&config, text).unwrap();
    let mut daemon = Daemon::start_with(&config, Some(http), |c| {
        c.env(
            "CLIPFILTER_LOG",
            "info,ort=warn,clipfilterd::daemon::supervisor::events=debug",
        )
    });
    let agent = agent();
    let base = format!("http://127.0.0.1:{http}");
    let disk_full = || {
        let (_, _, page) = get(&agent, &format!("{base}/metrics"));
        page.lines()
            .find_map(|l| l.strip_prefix("clipfilter_outbox_disk_full "))
            .map(|v| v.trim().to_owned())
    };
    let mut hooked: Vec<String> = Vec::new();
    let receive = |hooked: &mut Vec<String>| {
        while let Ok(r) = hook.received.try_recv() {
            hooked.push(r.event.id.to_string());
        }
    };
    let logged = |daemon: &Daemon| -> Vec<String> {
        daemon
            .events()
            .iter()
            .filter_map(|e| e["id"].as_str().map(String::from))
            .collect()
    };
    let count = |ids: &[String], id: &str| ids.iter().filter(|i| *i == id).count();

    // Healthy: events reach both outputs, with snapshots on the small disk.
    wait_until("events at both outputs", || {
        receive(&mut hooked);
        hooked.len() >= 3 && logged(&daemon).len() >= 3
    });
    assert_eq!(get(&agent, &format!("{base}/healthz")).0, 200);

    // The endpoint fails, events wait in the outbox; then the disk fills up.
    hook.failing.store(true, Ordering::SeqCst);
    wait_until("events pending for the hook", || {
        daemon.status()["events"]["pending"]["hook"]
            .as_u64()
            .unwrap_or(0)
            >= 2
    });
    let filler = tmpfs.fill("filler");
    wait_until("/healthz to fail", || {
        get(&agent, &format!("{base}/healthz")).0 == 503
    });
    let (_, _, why) = get(&agent, &format!("{base}/healthz"));
    assert!(why.contains("disk is full"), "{why}");
    assert_eq!(daemon.status()["events"]["accepting"], false);
    assert_eq!(disk_full().as_deref(), Some("1"));

    // The endpoint is back: what was pending is delivered, but cannot be deleted. It is not
    // sent again in a loop: the output backs off until the deletions go through.
    hook.failing.store(false, Ordering::SeqCst);
    let failures = || {
        let (_, _, page) = get(&agent, &format!("{base}/metrics"));
        page.lines()
            .find_map(|l| {
                l.strip_prefix("clipfilter_output_delivery_failures_total{output=\"hook\"} ")
            })
            .map_or(0.0, |v| v.trim().parse::<f64>().unwrap())
    };
    let before = failures();
    wait_until(
        "refused events, and the hook's queue empty or retried",
        || {
            receive(&mut hooked);
            let status = daemon.status();
            status["events"]["refused"].as_u64().unwrap_or(0) >= 3
                && (failures() >= before + 3.0 || status["events"]["pending"]["hook"].is_null())
        },
    );
    receive(&mut hooked);
    for id in hooked.iter().chain(logged(&daemon).iter()) {
        assert!(
            count(&hooked, id) <= 2 && count(&logged(&daemon), id) <= 2,
            "event {id} sent {} times to the hook, {} times to the log",
            count(&hooked, id),
            count(&logged(&daemon), id)
        );
    }
    // Loud, but once per change of state, not per event.
    let (full, again) = (
        log_count(&daemon, "the state disk is full"),
        log_count(&daemon, "the state disk has space again"),
    );
    let refused = daemon.status()["events"]["refused"].as_u64().unwrap();
    assert!(
        full >= 1 && full == again + 1 && (full as u64) < refused,
        "{full} lines 'full', {again} 'space again', {refused} events refused"
    );
    assert_eq!(log_count(&daemon, "event not queued"), 0);

    // Space returns: events are accepted again, and reach both outputs.
    std::fs::remove_file(&filler).unwrap();
    wait_until("/healthz to pass", || {
        get(&agent, &format!("{base}/healthz")).0 == 200
    });
    assert_eq!(daemon.status()["events"]["accepting"], true);
    assert_eq!(disk_full().as_deref(), Some("0"));
    assert_eq!(
        log_count(&daemon, "the state disk has space again"),
        log_count(&daemon, "the state disk is full")
    );
    let seen: HashSet<String> = hooked.iter().cloned().collect();
    wait_until("new events at both outputs", || {
        receive(&mut hooked);
        let log = logged(&daemon);
        hooked.iter().filter(|id| !seen.contains(*id)).count() >= 2
            && log.iter().filter(|id| !seen.contains(*id)).count() >= 2
    });
    daemon.signal("TERM");
    assert!(daemon.child.wait().unwrap().success());
    receive(&mut hooked);

    // No accepted event is lost: each reached each output or still waits in the outbox.
    let matched = logged_ids(&daemon, "match ");
    let refused: HashSet<String> = logged_ids(&daemon, "event refused").into_iter().collect();
    assert!(
        !refused.is_empty(),
        "nothing was refused: the disk never filled"
    );
    let outbox = clipfilterd::daemon::outbox::Outbox::open(&state).unwrap();
    let pending = |output: &str| -> HashSet<String> {
        outbox
            .peek(output, 0, 100_000)
            .unwrap()
            .iter()
            .map(|p| p.event_id.to_string())
            .collect()
    };
    let (log, pending_log, pending_hook) = (logged(&daemon), pending("log"), pending("hook"));
    for id in matched.iter().filter(|id| !refused.contains(*id)) {
        assert!(
            log.contains(id) || pending_log.contains(id),
            "accepted event {id} never reached the log"
        );
        assert!(
            hooked.contains(id) || pending_hook.contains(id),
            "accepted event {id} never reached the hook"
        );
    }
    drop(outbox);
    drop(tmpfs);
}

/// Issue 15, 9: a webhook that answers 200 with a body shorter than its Content-Length, then
/// closes the connection, has not acknowledged the event: it is sent again.
#[test]
fn webhook_200_with_a_cut_off_body_is_not_a_delivery() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, requests) = crossbeam_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            // Read the request: headers, then Content-Length bytes of body.
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&request).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut body = vec![0u8; length];
            let _ = stream.read_exact(&mut body);
            let answer: &[u8] = if n == 0 {
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nshort"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            };
            let _ = stream.write_all(answer);
            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
        }
    });
    let config = format!(
        "[[output]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         timeout = \"5s\"\nretry_initial = \"50ms\"\nretry_max = \"200ms\"\n"
    );
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery = Delivery::start(state.path(), &outputs(&config), &metrics).unwrap();
    let sent = events("cam1", 1);
    delivery.submit(&sent[0], &["hook"]).unwrap();
    wait_until("the event to be delivered", || {
        delivery.pending("hook") == 0
    });
    assert!(delivery.shutdown());
    let bodies: Vec<String> = requests.try_iter().collect();
    assert_eq!(
        bodies.len(),
        2,
        "the cut-off answer must not count as an acknowledgement"
    );
    for body in &bodies {
        let got: Event = serde_json::from_str(body).unwrap();
        assert_eq!(got, sent[0]);
    }
    assert_eq!(
        metric(
            &metrics,
            "clipfilter_output_delivery_failures_total{output=\"hook\"}"
        ),
        1.0
    );
}
