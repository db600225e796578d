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

use crate::delivery::{events, metric};
use crate::util::{PATIENCE, free_port};

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
}

impl Server {
    fn start() -> Server {
        let mut s = Server {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        s.spawn();
        s
    }

    /// A server that is not running yet (its port chosen).
    fn not_started() -> Server {
        Server {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        }
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

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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

/// Creates the stream `clipfilter.>` with a two-minute duplicate window.
fn create_stream(url: &str) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.unwrap();
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
        let client = async_nats::connect(url).await.unwrap();
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
        let client = async_nats::connect(url).await.unwrap();
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
