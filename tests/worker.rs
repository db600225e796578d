//! The batched inference worker under concurrency, on real ONNX Runtime sessions of the oracle
//! models (whose embeddings name the colour of the frame, so a misrouted result is visible).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clipfilter::engine::{Engine, EngineConfig};
use clipfilter::worker::{BatchConfig, StreamOptions};

use crate::util::{self, PATIENCE, cosine};

const COLOURS: [[u8; 3]; 8] = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [255, 255, 0],
    [0, 255, 255],
    [255, 0, 255],
    [255, 255, 255],
    [0, 0, 0],
];

fn engine(model: &str, max_batch: usize, max_wait_ms: u64) -> Engine {
    let mut cfg = EngineConfig::new(util::model(model));
    cfg.batch = BatchConfig {
        max_batch,
        max_wait: Duration::from_millis(max_wait_ms),
    };
    cfg.session.intra_threads = 1;
    Engine::load(&cfg).unwrap()
}

fn solid(engine: &Engine, rgb: [u8; 3]) -> Vec<f32> {
    let frame: Vec<u8> = (0..80 * 60).flat_map(|_| rgb).collect();
    let mut pre = engine.preprocessor().unwrap();
    let mut out = vec![0.0; pre.output_len()];
    pre.run_rgb8(&frame, 80, 60, &mut out).unwrap();
    out
}

#[test]
fn results_route_to_their_stream_and_frame_under_concurrency() {
    let engine = Arc::new(engine("oracle-clip", 5, 1));
    let pixels: Vec<Vec<f32>> = COLOURS.iter().map(|c| solid(&engine, *c)).collect();
    let expected = engine.embed_pixels(&pixels.concat()).unwrap();
    // Every pair of colours is told apart by the oracle.
    for i in 0..COLOURS.len() {
        for j in 0..i {
            assert!(
                cosine(&expected[i], &expected[j]) < 0.5,
                "colours {i} and {j} look alike"
            );
        }
    }
    let per_stream = 40;
    let threads: Vec<_> = (0..COLOURS.len())
        .map(|k| {
            let engine = engine.clone();
            let pixels = pixels[k].clone();
            let want = expected[k].clone();
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(k as u64);
                let mut stream = engine.stream(StreamOptions::batch(3));
                let mut next = 0u64;
                let mut submitted = 0;
                while next < per_stream {
                    // Bursts of random size, with random pauses: random batch splits.
                    while submitted < per_stream && stream.queued() < 3 && rng.bool() {
                        let mut buf = stream.buffer();
                        buf.copy_from_slice(&pixels);
                        let s = stream.submit(buf).unwrap();
                        assert_eq!(s.seq, submitted);
                        assert_eq!(s.replaced, None);
                        submitted += 1;
                    }
                    if rng.u8(..) < 30 {
                        std::thread::sleep(Duration::from_micros(rng.u64(0..2000)));
                    }
                    if let Some(out) =
                        stream.wait_result(Duration::from_millis(if submitted > next {
                            10_000
                        } else {
                            1
                        }))
                    {
                        assert_eq!(out.seq, next, "stream {k}: results out of order");
                        let e = out.embeddings.unwrap();
                        assert!(
                            cosine(&e, &want) > 0.9999,
                            "stream {k} frame {next}: got another stream's result"
                        );
                        assert!(out.batch >= 1 && out.batch <= 5);
                        stream.recycle(out.pixels);
                        next += 1;
                    }
                }
                assert_eq!(stream.dropped(), 0);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("stream thread");
    }
    let stats = engine.stats();
    let images = stats.images.load(std::sync::atomic::Ordering::Relaxed);
    let batches = stats.batches.load(std::sync::atomic::Ordering::Relaxed);
    assert!(images >= 8 * per_stream, "{images} images");
    assert!(
        batches < images,
        "no batching happened: {batches} batches for {images} images"
    );
}

#[test]
fn a_stream_closing_mid_batch_does_not_disturb_the_others() {
    let engine = Arc::new(engine("oracle-slow", 4, 5));
    let red = solid(&engine, COLOURS[0]);
    let green = solid(&engine, COLOURS[1]);
    let want = engine.embed_pixels(&green).unwrap().remove(0);
    let mut keep = engine.stream(StreamOptions::batch(4));
    {
        let mut leaving = engine.stream(StreamOptions::batch(4));
        for _ in 0..3 {
            let mut b = leaving.buffer();
            b.copy_from_slice(&red);
            leaving.submit(b).unwrap();
        }
        let mut b = keep.buffer();
        b.copy_from_slice(&green);
        keep.submit(b).unwrap();
        // `leaving` is dropped with its images queued or in the batch being inferred.
    }
    for i in 0..3u64 {
        if i > 0 {
            let mut b = keep.buffer();
            b.copy_from_slice(&green);
            keep.submit(b).unwrap();
        }
        let out = keep
            .wait_result(PATIENCE)
            .expect("result after the other stream left");
        assert_eq!(out.seq, i);
        assert!(cosine(&out.embeddings.unwrap(), &want) > 0.9999);
    }
}

#[test]
fn newest_frame_wins_and_drops_are_counted_exactly() {
    // One inference takes >= 150 ms; frames come every 5 ms.
    let engine = engine("oracle-slow", 1, 0);
    let colours: Vec<Vec<f32>> = COLOURS.iter().map(|c| solid(&engine, *c)).collect();
    let mut stream = engine.stream(StreamOptions::live());
    let n = 60u64;
    let mut replaced = 0u64;
    let mut results = Vec::new();
    for i in 0..n {
        let mut b = stream.buffer();
        b.copy_from_slice(&colours[i as usize % colours.len()]);
        let s = stream.submit(b).unwrap();
        assert_eq!(s.seq, i);
        if let Some(old) = s.replaced {
            assert!(old < i);
            replaced += 1;
        }
        while let Some(out) = stream.try_result() {
            results.push(out.seq);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + PATIENCE;
    while (results.len() as u64) < n - replaced && Instant::now() < deadline {
        if let Some(out) = stream.wait_result(Duration::from_millis(200)) {
            results.push(out.seq);
        }
    }
    assert!(
        replaced > n / 2,
        "the slow model should have forced drops: {replaced}"
    );
    assert_eq!(stream.dropped(), replaced);
    assert_eq!(
        results.len() as u64 + replaced,
        n,
        "every frame is either inferred or counted as dropped"
    );
    assert!(
        results.windows(2).all(|w| w[0] < w[1]),
        "results in order: {results:?}"
    );
    // The last frame always wins.
    assert_eq!(results.last(), Some(&(n - 1)));
    assert_eq!(
        engine
            .stats()
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        replaced
    );
}

#[test]
fn shutdown_does_not_deadlock() {
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let engine = engine("oracle-slow", 2, 1);
        let px = solid(&engine, COLOURS[2]);
        let mut a = engine.stream(StreamOptions::batch(2));
        let mut b = engine.stream(StreamOptions::live());
        for _ in 0..2 {
            let mut x = a.buffer();
            x.copy_from_slice(&px);
            a.submit(x).unwrap();
            let mut y = b.buffer();
            y.copy_from_slice(&px);
            b.submit(y).unwrap();
        }
        // The engine (and its worker) goes while both streams still have work queued.
        drop(engine);
        let mut x = a.buffer();
        x.copy_from_slice(&px);
        let after = a.submit(x);
        done_tx.send(after.is_err()).unwrap();
    });
    let refused = done_rx.recv_timeout(PATIENCE).expect("shutdown hung");
    assert!(refused, "a stream must say the worker has stopped");
}

#[test]
fn a_job_of_many_crops_comes_back_whole_and_in_order_across_batches() {
    // 12 images (crops of one sample) with batches of 5: three batches, one result.
    let engine = engine("oracle-clip", 5, 1);
    let colours: Vec<Vec<f32>> = COLOURS.iter().map(|c| solid(&engine, *c)).collect();
    let want = engine.embed_pixels(&colours.concat()).unwrap();
    let order: Vec<usize> = (0..12).map(|i| (i * 5) % COLOURS.len()).collect();
    let mut stream = engine.stream(StreamOptions::live());
    let mut job = stream.buffer_for(order.len());
    for (chunk, &c) in job.chunks_exact_mut(colours[0].len()).zip(&order) {
        chunk.copy_from_slice(&colours[c]);
    }
    stream.submit(job).unwrap();
    let out = stream.wait_result(PATIENCE).expect("a result");
    assert_eq!(out.images, 12);
    assert_eq!(out.batch, 5);
    let got: Vec<&[f32]> = out.each().collect();
    assert_eq!(got.len(), 12);
    for (e, &c) in got.iter().zip(&order) {
        assert!(cosine(e, &want[c]) > 0.9999, "crop of colour {c} misplaced");
    }
    assert!(stream.try_result().is_none(), "one result per job");
    // Too many images for one job, or a partial image, are refused.
    let mut big = stream.buffer_for(clipfilter::limits::MAX_CROPS + 1);
    big.truncate(colours[0].len() * (clipfilter::limits::MAX_CROPS + 1));
    assert!(stream.submit(big).is_err());
    assert!(stream.submit(vec![0.0; colours[0].len() + 1]).is_err());
}

#[test]
fn a_tiled_stream_takes_turns_with_the_others() {
    // A tiled camera submits 9 crops; another camera one frame just after. Batches of 4 take
    // one image per stream per pass, so the other camera's frame rides in the second batch and
    // its verdict comes before the tiled one (which needs three batches), instead of waiting
    // behind all nine crops.
    let engine = engine("oracle-slow", 4, 0);
    let red = solid(&engine, COLOURS[0]);
    let green = solid(&engine, COLOURS[1]);
    let mut tiled = engine.stream(StreamOptions::live());
    let mut other = engine.stream(StreamOptions::live());
    let mut job = tiled.buffer_for(9);
    for chunk in job.chunks_exact_mut(red.len()) {
        chunk.copy_from_slice(&red);
    }
    tiled.submit(job).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    let mut b = other.buffer();
    b.copy_from_slice(&green);
    other.submit(b).unwrap();
    let first = other
        .wait_result(PATIENCE)
        .expect("the other camera's verdict");
    assert!(first.embeddings.is_ok());
    assert!(
        tiled.try_result().is_none(),
        "the tiled camera's nine crops went ahead of the other camera"
    );
    let done = tiled.wait_result(PATIENCE).expect("the tiled verdict");
    assert_eq!(done.images, 9);
    assert!(first.latency < done.latency);
}
