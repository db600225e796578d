//! sd_notify on a real `NOTIFY_SOCKET`: the test binds a Unix datagram socket and runs itself as
//! a child process (the crate reads `NOTIFY_SOCKET` and `WATCHDOG_*` from the environment, which a
//! test must not change in its own process).

use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::util::{PATIENCE, notify_until};
use clipfilterd::daemon::notify::Notifier;

const CHILD_FLAG: &str = "CLIPFILTER_TEST_NOTIFY_CHILD";
const WATCHDOG: Duration = Duration::from_millis(600);

/// Helper process for [`ready_status_and_watchdog_reach_a_real_notify_socket`]: a daemon-like
/// main loop and inference worker; stdin says `stall`, `resume` or `quit`.
#[test]
#[ignore = "helper process, run by ready_status_and_watchdog_reach_a_real_notify_socket"]
fn notify_child() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        return;
    }
    let notifier = Notifier::from_env();
    assert_eq!(notifier.watchdog_interval(), Some(WATCHDOG));
    let main_loop = notifier.heartbeat("main-loop");
    let worker = notifier.heartbeat("inference-worker");
    notifier.status("loading model");
    notifier.ready();
    notifier.status("running 2 pipelines");
    let stalled = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let period = notifier.beat_period();
    let beater = {
        let (stalled, done) = (Arc::clone(&stalled), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                main_loop.beat();
                if !stalled.load(Ordering::SeqCst) {
                    worker.beat();
                }
                std::thread::sleep(period / 4);
            }
        })
    };
    for line in std::io::stdin().lines() {
        match line.unwrap().as_str() {
            "stall" => stalled.store(true, Ordering::SeqCst),
            "resume" => stalled.store(false, Ordering::SeqCst),
            _ => break,
        }
    }
    notifier.stopping();
    done.store(true, Ordering::SeqCst);
    beater.join().unwrap();
    notifier.shutdown();
}

#[test]
fn ready_status_and_watchdog_reach_a_real_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    // WATCHDOG_PID must be the child's own pid: let a shell set it and exec the test binary.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("export WATCHDOG_PID=$$; exec \"$0\" \"$@\"")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sd_notify::notify_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FLAG, "1")
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", WATCHDOG.as_micros().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();

    let mut pings = 0;
    let seen = notify_until(
        &socket,
        PATIENCE,
        "READY, STATUS and two WATCHDOG pings",
        |line| {
            pings += usize::from(line == "WATCHDOG=1");
            pings >= 2
        },
    );
    assert!(seen.iter().any(|l| l == "READY=1"), "{seen:?}");
    assert!(seen.iter().any(|l| l == "STATUS=loading model"), "{seen:?}");
    assert!(
        seen.iter().any(|l| l == "STATUS=running 2 pipelines"),
        "{seen:?}"
    );

    // The inference worker stops beating: the watchdog says so once and stops pinging.
    writeln!(stdin, "stall").unwrap();
    let seen = notify_until(&socket, PATIENCE, "the stale-heartbeat status", |l| {
        l.starts_with("STATUS=watchdog withheld")
    });
    let status = seen.last().unwrap();
    assert!(
        status.contains("inference-worker") && !status.contains("main-loop"),
        "{status}"
    );
    socket.set_read_timeout(Some(WATCHDOG * 3)).unwrap();
    let mut buf = [0u8; 4096];
    match socket.recv(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Ok(n) => panic!(
            "got {:?} while a heartbeat was stale",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("{e}"),
    }

    // It beats again: the pings resume.
    writeln!(stdin, "resume").unwrap();
    notify_until(&socket, PATIENCE, "WATCHDOG after recovery", |l| {
        l == "WATCHDOG=1"
    });

    writeln!(stdin, "quit").unwrap();
    notify_until(&socket, PATIENCE, "STOPPING", |l| l == "STOPPING=1");
    drop(stdin);
    assert!(child.wait().unwrap().success(), "the child process failed");
}
