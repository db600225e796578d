//! Two servers, one killed and restarted; servers that hang; no server at all.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use clipfilter_triton::{Backoff, Error, Health, Pool, PoolConfig, Tensor};

use crate::util::{self, TritonServer};

const MODEL: &str = "tiny-clip_image";
/// "At once": no network call is made (measured: well under a millisecond; slack for busy machines).
const FAST: Duration = Duration::from_millis(250);

fn one_image() -> Tensor {
    let rgb = util::rgb_batch(1, 224, 224, 7);
    let pixels = util::normalise(
        &rgb,
        224 * 224,
        &clipfilter_triton::fold::Normalisation::CLIP,
    );
    Tensor::from_f32("pixel_values", vec![1, 3, 224, 224], &pixels).unwrap()
}

fn fast_config(endpoints: Vec<String>, timeout: Duration) -> PoolConfig {
    let mut config = PoolConfig::new(endpoints).model(MODEL, None);
    config.timeout = timeout;
    // generous: the test machines are shared and busy; a slow probe must not take a server out
    config.probe_timeout = Duration::from_secs(3);
    config.probe_interval = Duration::from_millis(500);
    config.backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
        multiplier: 2.0,
        jitter: 0.2,
    };
    config
}

fn requests(pool: &Pool) -> Vec<u64> {
    pool.status().iter().map(|s| s.requests).collect()
}

fn wait_health(pool: &Pool, index: usize, health: Health, within: Duration) {
    let start = Instant::now();
    while pool.status()[index].health != health {
        assert!(
            start.elapsed() < within,
            "endpoint {index} not {health:?} after {within:?}: {:?}",
            pool.status()[index]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn failover_recovery_and_hanging_servers() {
    let repo = util::model_repository("tiny-clip", "image");
    let mut a = TritonServer::start(repo.path(), &[MODEL]);
    let b = TritonServer::start(repo.path(), &[MODEL]);
    let pool = Pool::connect(fast_config(
        vec![a.grpc_url(), b.grpc_url()],
        Duration::from_secs(20),
    ))
    .unwrap();
    assert_eq!(pool.ready_count(), 2, "{:?}", pool.status());
    let image = one_image();

    // round-robin over both
    for _ in 0..10 {
        pool.infer(MODEL, vec![image.clone()]).unwrap();
    }
    assert_eq!(requests(&pool), [5, 5], "{:?}", pool.status());

    // one killed: every request still succeeds, on the other
    a.kill();
    for i in 0..20 {
        pool.infer(MODEL, vec![image.clone()])
            .unwrap_or_else(|e| panic!("request {i} after the kill: {e}"));
    }
    let status = pool.status();
    assert_eq!(status[0].health, Health::Down, "{status:?}");
    assert!(
        status[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains(&a.grpc_url()),
        "{status:?}"
    );
    assert!(
        status[0].requests <= 6,
        "requests still sent to the dead endpoint: {status:?}"
    );
    assert_eq!(status[1].requests, 5 + 20, "{status:?}");
    assert_eq!(status[1].errors, 0, "{status:?}");

    // restarted on the same port: it comes back by itself and gets requests again
    a.restart(&[MODEL]);
    wait_health(&pool, 0, Health::Ready, Duration::from_secs(30));
    let before = requests(&pool);
    for _ in 0..10 {
        pool.infer(MODEL, vec![image.clone()]).unwrap();
    }
    let after = requests(&pool);
    assert_eq!(
        (after[0] - before[0], after[1] - before[1]),
        (5, 5),
        "{:?}",
        pool.status()
    );

    // both frozen (connections accepted, nothing answered): the timeout bounds the call ...
    let short = Pool::connect(fast_config(
        vec![a.grpc_url(), b.grpc_url()],
        Duration::from_secs(2),
    ))
    .unwrap();
    assert_eq!(short.ready_count(), 2);
    a.freeze(true);
    b.freeze(true);
    let start = Instant::now();
    let e = short.infer(MODEL, vec![image.clone()]).unwrap_err();
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "a hanging call took {took:?}: {e}"
    );
    assert!(
        matches!(e, Error::Timeout { .. } | Error::NoReadyEndpoint { .. }),
        "{e:?}"
    );
    // ... and once both are known down, calls fail at once
    wait_health(&short, 0, Health::Down, Duration::from_secs(10));
    wait_health(&short, 1, Health::Down, Duration::from_secs(10));
    let start = Instant::now();
    let e = short.infer(MODEL, vec![image.clone()]).unwrap_err();
    assert!(start.elapsed() < FAST, "took {:?}", start.elapsed());
    assert!(
        matches!(e, Error::NoReadyEndpoint { total: 2, .. }),
        "{e:?}"
    );
    // thawed: back by themselves
    a.freeze(false);
    b.freeze(false);
    wait_health(&short, 0, Health::Ready, Duration::from_secs(30));
    wait_health(&short, 1, Health::Ready, Duration::from_secs(30));
    short.infer(MODEL, vec![image]).unwrap();
}

#[test]
fn no_server_at_all_fails_fast() {
    // one port with nothing listening, one that accepts connections and never answers
    let closed = util::free_port();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let endpoints = vec![
        format!("grpc://127.0.0.1:{closed}"),
        format!("127.0.0.1:{silent_port}"),
    ];
    let mut config = fast_config(endpoints, Duration::from_secs(1));
    config.probe_timeout = Duration::from_millis(500);
    let start = Instant::now();
    let pool = Pool::connect(config).unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "connect took {:?}",
        start.elapsed()
    );
    assert_eq!(pool.ready_count(), 0);
    let status = pool.status();
    assert!(
        status[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("cannot reach"),
        "{status:?}"
    );
    assert!(
        status[1]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("timed out"),
        "{status:?}"
    );

    let start = Instant::now();
    let e = pool.infer(MODEL, vec![one_image()]).unwrap_err();
    assert!(start.elapsed() < FAST, "took {:?}", start.elapsed());
    let text = e.to_string();
    assert!(
        matches!(e, Error::NoReadyEndpoint { total: 2, .. }),
        "{e:?}"
    );
    assert!(
        text.starts_with(&format!("no Triton endpoint is ready for model '{MODEL}'")),
        "{text}"
    );
    let e = pool.wait_ready(Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, Error::NoReadyEndpoint { .. }), "{e:?}");
    drop(silent);
}
