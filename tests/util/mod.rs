//! Helpers shared by the integration tests.

pub mod browser;
pub mod daemon;
pub mod rtsp;
/// The Triton test harness of crates/triton (servers, model repositories, references).
#[path = "../../crates/triton/tests/triton/util.rs"]
#[allow(dead_code)]
pub mod triton;

use std::ffi::OsStr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen before it fails: a verdict, a log
/// line, an event, a datagram. Generous because the suite runs on loaded 2-core machines (CI, a
/// shared workstation) where a pipeline start with a model load can take tens of seconds; a test
/// that passes never waits this long, so the value only costs time when something is broken.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that nothing listens on now and that no test of this process was given
/// before (see there), for servers the tests start and for addresses that must refuse.
pub use triton::free_port;

/// The value of `series` (a metric name with its labels, exactly as exported) in a Prometheus
/// text exposition, 0 when it is absent (a longer name with the same start does not count).
pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map_or(0.0, |v| {
            v.parse()
                .unwrap_or_else(|e| panic!("{series}: {v:?} is not a number: {e}"))
        })
}

/// The repository's `tests/fixtures` folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A committed fixture model folder.
pub fn model(name: &str) -> PathBuf {
    let p = fixtures().join(name);
    assert!(
        p.is_dir(),
        "fixture model {} is missing: run tools/setup.sh",
        p.display()
    );
    p
}

/// The oracle model (a frame's mean colour -> its colour word, see
/// tests/fixtures/oracle-clip/README.md): the model whose verdicts the tests know in advance.
pub fn oracle() -> PathBuf {
    model("oracle-clip")
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), as editors do.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Files made by tools/setup.sh (sample media, photo references).
pub fn local() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".local")
}

/// The real CCTV clip the set-up extracts from opencv-doc.
pub fn vtest() -> PathBuf {
    let video = local().join("media/video/vtest.avi");
    assert!(
        video.is_file(),
        "{} is missing: run tools/setup.sh",
        video.display()
    );
    video
}

/// Reads a JSON fixture.
pub fn json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `clipfilterd` binary.
pub fn clipfilterd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clipfilterd"))
}

/// Runs `clipfilterd` with `args`.
pub fn run(args: &[impl AsRef<OsStr>]) -> Output {
    clipfilterd().args(args).output().expect("clipfilterd runs")
}

/// stdout and stderr of an output, for assertion messages.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The deterministic test images both sides generate (see tools/clip_tools/common.py):
/// `1.5 * sin(0.1*x + 0.173*y + 1.7*c + 0.917*b + 0.05*x*y/W)`, in f64, cast to f32.
pub fn formula_pixels(batch: usize, h: usize, w: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(batch * 3 * h * w);
    for b in 0..batch {
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    let (xf, yf) = (x as f64, y as f64);
                    let t = 0.1 * xf
                        + 0.173 * yf
                        + 1.7 * c as f64
                        + 0.917 * b as f64
                        + 0.05 * xf * yf / w as f64;
                    v.push((1.5 * t.sin()) as f32);
                }
            }
        }
    }
    v
}

/// Reads a little-endian float32, C-order `.npy` file (format 1.0/2.0).
pub fn read_npy_f32(path: &Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "{} is not .npy", path.display());
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("utf-8 header");
    assert!(
        header.contains("'<f4'"),
        "{}: not float32 little-endian: {header}",
        path.display()
    );
    assert!(
        header.contains("'fortran_order': False"),
        "{}: not C order",
        path.display()
    );
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape");
    let shape: Vec<usize> = shape_str
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (shape, data)
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

/// Floats of a JSON array.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// Receives `sd_notify` datagrams on `socket` until one has a line for which `want` is true,
/// for at most `patience`; returns every line seen.
pub fn notify_until(
    socket: &UnixDatagram,
    patience: Duration,
    what: &str,
    mut want: impl FnMut(&str) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + patience;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}; got {seen:?}"
        );
        socket.set_read_timeout(Some(left)).unwrap();
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("waiting for {what}: {e}; got {seen:?}"));
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let mut found = false;
        for line in text.lines() {
            found |= want(line);
            seen.push(line.to_owned());
        }
        if found {
            return seen;
        }
    }
}
