//! The NATS JetStream output against a real `nats-server -js` on 127.0.0.1 (Debian's
//! `nats-server`, installed by tools/setup.sh): every event is stored exactly once, in order,
//! across a server restart mid-flow, a server that is down when delivery starts, and a SIGKILL
//! of the process with events pending (the stream's duplicate window drops the resent ones).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clipfilterd::daemon::delivery::Delivery;
use clipfilterd::daemon::event::Event;
use clipfilterd::daemon::metrics::Metrics;
use clipfilterd::daemon::output::Outputs;

use serde_json::Value;

use crate::delivery::{events, metric};
use crate::util::daemon::{Daemon, config_head, live_pattern};
use crate::util::{PATIENCE, free_port, write_atomically};

const STREAM: &str = "CLIPFILTER";

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `nats-server -js` with its store in a temporary folder, killed when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// More nats-server options (authorization).
    args: Vec<String>,
    /// `user:password@` or `token@` for the test's own connections.
    auth: String,
}

impl Server {
    fn start() -> Server {
        let mut s = Server::not_started();
        s.spawn();
        s
    }

    /// A server that is not running yet (its port chosen).
    fn not_started() -> Server {
        Server {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            args: Vec::new(),
            auth: String::new(),
        }
    }

    /// A server that takes only clients with this user name and password.
    fn with_user(user: &str, password: &str) -> Server {
        let mut s = Server::not_started();
        s.args = ["--user", user, "--pass", password]
            .map(String::from)
            .to_vec();
        s.auth = format!("{user}:{password}@");
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = Command::new("/usr/sbin/nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian package nats-server, tools/setup.sh) must be installed");
        self.child = Some(child);
        wait_until("nats-server to listen", || {
            TcpStream::connect(("127.0.0.1", self.port)).is_ok()
        });
    }

    /// SIGKILL, as a crash would.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's URL as clients without credentials see it.
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL the test itself uses (with the server's credentials, if any).
    fn admin_url(&self) -> String {
        format!("nats://{}127.0.0.1:{}", self.auth, self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The test's own connection to `url`, with the user and password in it if there are any.
async fn admin(url: &str) -> async_nats::Client {
    let options = match url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
    {
        Some((auth, host)) => {
            let (user, password) = auth.split_once(':').unwrap_or((auth, ""));
            async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
                .connect(format!("nats://{host}"))
                .await
        }
        None => async_nats::connect(url).await,
    };
    options.unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// Creates the stream `clipfilter.>` with a two-minute duplicate window.
fn create_stream(url: &str) {
    runtime().block_on(async {
        let client = admin(url).await;
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec!["clipfilter.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
    });
}

/// One stored message: subject, `Nats-Msg-Id`, payload.
#[derive(Debug)]
struct Stored {
    subject: String,
    msg_id: String,
    payload: String,
}

/// Every message of the stream, in stream order.
fn stored(url: &str) -> Vec<Stored> {
    runtime().block_on(async {
        let client = admin(url).await;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(STREAM).await.unwrap();
        let n = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=n {
            let m = stream.get_raw_message(seq).await.unwrap();
            let msg_id = m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            out.push(Stored {
                subject: m.subject.to_string(),
                msg_id,
                payload: String::from_utf8_lossy(&m.payload).into_owned(),
            });
        }
        out
    })
}

/// Publishes `payload` with `msg_id` as the output would, before the daemon does.
fn publish_first(url: &str, subject: &str, msg_id: &str, payload: &str) {
    runtime().block_on(async {
        let client = admin(url).await;
        let js = async_nats::jetstream::new(client);
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.to_string().into())
            .message_id(msg_id);
        let ack = js
            .send_publish(subject.to_string(), publish)
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(!ack.duplicate);
    });
}

fn outputs(url: &str) -> Outputs {
    crate::delivery::outputs(&format!(
        "[[output]]\nname = 'fleet'\ntype = 'nats'\nservers = ['{url}']\nretry_initial = '100ms'\nretry_max = '1s'\nack_timeout = '2s'\n"
    ))
}

/// The stored ids equal `want`, each once, in order.
fn assert_exactly_once(stored: &[Stored], want: &[uuid::Uuid]) {
    let ids: Vec<String> = stored.iter().map(|m| m.msg_id.clone()).collect();
    let want: Vec<String> = want.iter().map(|u| u.to_string()).collect();
    assert_eq!(ids, want, "every event once, in order");
}

#[test]
fn nats_stores_every_event_once_in_order_across_a_server_restart() {
    let mut server = Server::start();
    create_stream(&server.url());
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery = Delivery::start(state.path(), &outputs(&server.url()), &metrics).unwrap();
    let sent = events("cam1", 12);
    for e in &sent[..4] {
        delivery.submit(e, &["fleet"]).unwrap();
    }
    wait_until("acknowledgements", || delivery.pending("fleet") == 0);

    // The server crashes; events keep coming; it comes back with its store.
    server.kill();
    for e in &sent[4..] {
        delivery.submit(e, &["fleet"]).unwrap();
    }
    let failures = "clipfilter_output_delivery_failures_total{output=\"fleet\"}";
    wait_until("the output to notice", || metric(&metrics, failures) >= 1.0);
    assert_eq!(delivery.pending("fleet"), 8);
    server.spawn();
    wait_until("acknowledgements after the restart", || {
        delivery.pending("fleet") == 0
    });
    assert!(delivery.shutdown());

    let stored = stored(&server.url());
    assert_exactly_once(&stored, &sent.iter().map(|e| e.id).collect::<Vec<_>>());
    assert_eq!(stored[0].subject, "clipfilter.cam1.label_0");
    assert_eq!(stored[5].subject, "clipfilter.cam1.label_2");
    let first: Event = serde_json::from_str(&stored[0].payload).unwrap();
    assert_eq!(first, sent[0], "the payload is the event JSON");
}

#[test]
fn nats_down_when_delivery_starts_gets_every_event_once_it_is_up() {
    let mut server = Server::not_started();
    let state = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let delivery = Delivery::start(state.path(), &outputs(&server.url()), &metrics).unwrap();
    let sent = events("gate", 5);
    for e in &sent {
        delivery.submit(e, &["fleet"]).unwrap();
    }
    let failures = "clipfilter_output_delivery_failures_total{output=\"fleet\"}";
    wait_until("failed attempts", || metric(&metrics, failures) >= 2.0);
    assert_eq!(delivery.pending("fleet"), 5);
    server.spawn();
    // No stream yet: the server answers, nothing takes the subject; events stay pending.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(delivery.pending("fleet"), 5);
    create_stream(&server.url());
    wait_until("acknowledgements", || delivery.pending("fleet") == 0);
    assert!(delivery.shutdown());
    assert_exactly_once(
        &stored(&server.url()),
        &sent.iter().map(|e| e.id).collect::<Vec<_>>(),
    );
}

const CHILD_STATE: &str = "CLIPFILTER_NATS_CHILD_STATE";
const CHILD_URL: &str = "CLIPFILTER_NATS_CHILD_URL";

/// Helper process for [`kill_9_with_events_pending_for_nats_stores_each_once`]: queues events
/// for a NATS server that is down, says so, and waits to be killed.
#[test]
#[ignore = "helper process, run by kill_9_with_events_pending_for_nats_stores_each_once"]
fn nats_crash_child() {
    let (Some(state), Ok(url)) = (std::env::var_os(CHILD_STATE), std::env::var(CHILD_URL)) else {
        return;
    };
    let metrics = Metrics::new();
    let delivery = Delivery::start(Path::new(&state), &outputs(&url), &metrics).unwrap();
    for e in events("dock", 10) {
        delivery.submit(&e, &["fleet"]).unwrap();
        println!("QUEUED {} {}", e.id, e.label);
    }
    println!("ALL QUEUED");
    loop {
        std::thread::park();
    }
}

#[test]
fn kill_9_with_events_pending_for_nats_stores_each_once() {
    let mut server = Server::not_started();
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "nats::nats_crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_STATE, state.path())
        .env(CHILD_URL, server.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut queued = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some((_, rest)) = line.split_once("QUEUED ") {
            let (id, label) = rest.split_once(' ').unwrap();
            queued.push((id.parse::<uuid::Uuid>().unwrap(), label.to_string()));
        }
        if line.ends_with("ALL QUEUED") {
            break;
        }
    }
    assert_eq!(queued.len(), 10, "the child did not queue its events");
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());

    // As if the process had died after the stream stored the first four but before it deleted
    // them from its outbox: they are in the stream already, under their ids.
    server.spawn();
    create_stream(&server.url());
    for (id, label) in &queued[..4] {
        let subject = format!("clipfilter.dock.{}", label.replace(' ', "_"));
        publish_first(
            &server.url(),
            &subject,
            &id.to_string(),
            "stored before the crash",
        );
    }

    let metrics = Metrics::new();
    let delivery = Delivery::start(state.path(), &outputs(&server.url()), &metrics).unwrap();
    assert_eq!(delivery.pending("fleet"), 10);
    wait_until("acknowledgements", || delivery.pending("fleet") == 0);
    assert!(delivery.shutdown());
    let stored = stored(&server.url());
    assert_exactly_once(&stored, &queued.iter().map(|q| q.0).collect::<Vec<_>>());
    assert!(
        stored[..4]
            .iter()
            .all(|m| m.payload == "stored before the crash")
    );
    assert!(stored[4..].iter().all(|m| m.payload.starts_with('{')));
}

/// A daemon whose events go to a NATS server that requires a user and password.
fn daemon_config(state: &Path, http: u16, server: &Server, password: &str) -> String {
    format!(
        "{}{}outputs = [\"log\", \"fleet\"]\n\n[[output]]\nname = \"fleet\"\ntype = \"nats\"\n\
         servers = [\"{}\"]\nusername = \"clipfilter\"\npassword = \"{password}\"\n\
         retry_initial = \"100ms\"\nretry_max = \"1s\"\nack_timeout = \"2s\"\n",
        config_head(state, http),
        live_pattern("cam", "red"),
        server.url(),
    )
}

#[test]
fn nats_with_a_password_takes_events_from_the_right_one_and_a_wrong_one_says_why() {
    const RIGHT: &str = "s3cret-Pw-right";
    const WRONG: &str = "s3cret-Pw-wrong";
    let server = Server::with_user("clipfilter", RIGHT);
    create_stream(&server.admin_url());
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    std::fs::write(
        &config,
        daemon_config(&dir.path().join("state"), http, &server, WRONG),
    )
    .unwrap();
    let daemon = Daemon::start(&config, Some(http));

    // The wrong password: the event waits in the outbox and the log says why.
    let (_, event) = daemon.wait_event(0, "red", |e| {
        e["pipeline"] == "cam" && e["label"] == "red" && e["state"] == "start"
    });
    let (_, line) = daemon.wait_log(0, "delivery failed");
    let error = line["fields"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        line["fields"]["output"] == "fleet" && error.contains("authorization violation"),
        "{line}"
    );
    let status = daemon.wait_status("the event pending for fleet", |s| {
        s["events"]["pending"]["fleet"].as_u64() >= Some(1)
    });
    assert!(stored(&server.admin_url()).is_empty());

    // The right password, reloaded: what waited is delivered, once.
    let log_from = daemon.stderr.len();
    write_atomically(
        &config,
        &daemon_config(&dir.path().join("state"), http, &server, RIGHT),
    );
    daemon.signal("HUP");
    daemon.wait_log(log_from, "configuration reloaded");
    daemon.wait_status("nothing pending for fleet", |s| {
        // an output with nothing pending is left out of the counts
        s["events"]["pending"]["fleet"].as_u64().unwrap_or(0) == 0
    });
    let stored = stored(&server.admin_url());
    let id = event["id"].as_str().unwrap();
    assert_eq!(
        stored.iter().filter(|m| m.msg_id == id).count(),
        1,
        "the event that waited is stored once: {stored:?}"
    );
    assert_eq!(stored[0].subject, "clipfilter.cam.red");
    let first: Value = serde_json::from_str(&stored[0].payload).unwrap();
    assert_eq!(first["id"], event["id"]);

    // Neither password shows anywhere the daemon writes or serves.
    let metrics = daemon.get("/metrics");
    let (logs, events) = (
        daemon.stderr.all().join("\n"),
        daemon.stdout.all().join("\n"),
    );
    assert!(daemon.stop(), "clean exit on SIGTERM");
    for (what, text) in [
        ("logs", &logs),
        ("events", &events),
        ("status", &status.to_string()),
        ("metrics", &metrics),
    ] {
        assert!(
            !text.contains(RIGHT) && !text.contains(WRONG),
            "a password shows in the {what}"
        );
    }
}
