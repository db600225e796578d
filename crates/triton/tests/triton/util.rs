//! Test harness: the Triton install of tools/setup-triton.sh, generated model repositories, real
//! `tritonserver` processes on free 127.0.0.1 ports, and reference outputs from Python onnxruntime.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use clipfilter_triton::{DataType, Tensor};

/// How long a server may take to load its models (python stubs import onnxruntime; the test
/// machines are shared and often busy).
pub const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The workspace root (this file is also compiled into the workspace's own test binary, whose
/// manifest is there).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|dir| dir.join("tools/triton_repo.py").is_file())
        .unwrap_or(here)
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// The install of tools/setup-triton.sh (`CLIPFILTER_TRITON_HOME` overrides `.local/triton`).
/// Missing: the test fails, saying how to install it (it never skips).
pub fn triton_home() -> PathBuf {
    let home = std::env::var_os("CLIPFILTER_TRITON_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".local/triton"));
    for needed in ["bin/tritonserver", "venv/bin/python"] {
        let path = home.join(needed);
        assert!(
            path.exists(),
            "Triton for the tests is not installed ({} is missing): run `bash tools/setup-triton.sh` \
             (under a minute, about 100 MB download; see tools/README.md)",
            path.display()
        );
    }
    home
}

/// The python of the Triton venv (numpy + onnxruntime).
pub fn python() -> PathBuf {
    triton_home().join("venv/bin/python")
}

fn run_checked(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A model repository for a fixture model folder, written by tools/triton_repo.py.
pub fn model_repository(fixture_name: &str, variants: &str) -> tempfile::TempDir {
    named_model_repository(fixture_name, variants, None)
}

/// The same with the models named `<name>_image`, ... instead of after the folder.
pub fn named_model_repository(
    fixture_name: &str,
    variants: &str,
    name: Option<&str>,
) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("clipfilter-triton-repo")
        .tempdir()
        .expect("temporary directory");
    run_checked(
        Command::new(python())
            .arg(repo_root().join("tools/triton_repo.py"))
            .arg(fixture(fixture_name))
            .arg(dir.path())
            .arg("--variants")
            .arg(variants)
            .arg("--max-batch-size")
            .arg("16")
            .args(name.map(|n| ["--name", n]).into_iter().flatten()),
        "tools/triton_repo.py",
    );
    dir
}

/// A port on 127.0.0.1 that nothing listens on now and that this process has not handed out
/// before, for servers the tests start and for addresses that must refuse.
///
/// Not the kernel's pick for port 0: that comes from the ephemeral range, where any process's
/// next `bind(0)` or outgoing connection may take a port as soon as it is free, such as the
/// port of a server a test killed and is about to restart, or one picked but not yet bound by a
/// server still loading its models. These ports lie below the ephemeral range, so neither ever
/// takes them, and each is handed out once per process. Test processes running at the same time
/// start at different places (from their pid); should two still meet, the second server cannot
/// bind (Triton does not share ports unless told to) and [`TritonServer::start`] tries others.
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let (low, size) = port_range();
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut offset =
        next.unwrap_or_else(|| (std::process::id().wrapping_mul(2_654_435_761)) % size);
    for _ in 0..size {
        let port = (low + offset % size) as u16;
        offset = (offset + 1) % size;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(offset);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..{}", low + size);
}

/// The ports [`free_port`] hands out: the 16384 below the kernel's ephemeral range (or from
/// 1024 when that range starts lower).
fn port_range() -> (u32, u32) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(16384).max(1024);
    (low, ephemeral_low.saturating_sub(low).max(1))
}

/// Whether `pid` alone listens on 127.0.0.1:`port`: every listening socket on that port in
/// /proc/net/tcp and tcp6 is one of the process's descriptors (/proc/PID/fd). Err says what
/// else was found.
pub fn sole_listener(pid: i32, port: u16) -> Result<(), String> {
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            // 0A: TCP_LISTEN
            if local_port == Some(port) && *state == "0A" {
                listening.push(format!("socket:[{inode}]"));
            }
        }
    }
    let ours: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map_err(|e| format!("process {pid} is gone: {e}"))?
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .collect();
    let foreign = listening.iter().filter(|s| !ours.contains(s)).count();
    match (listening.len(), foreign) {
        (0, _) => Err(format!("nothing listens on port {port}")),
        (_, 0) => Ok(()),
        (n, f) => Err(format!(
            "{n} sockets listen on port {port}, {f} of them not process {pid}'s"
        )),
    }
}

/// A running `tritonserver`, killed (and its python backend's shared memory removed) on drop.
pub struct TritonServer {
    child: Option<Child>,
    repo: PathBuf,
    extra_args: Vec<String>,
    pub grpc: u16,
    pub http: u16,
    pub metrics: u16,
    log: PathBuf,
    /// `--id`, which the server reports at `/v2`: the server answering is this one.
    id: String,
    shm_prefix: String,
    _log_dir: tempfile::TempDir,
}

static SERVERS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl TritonServer {
    /// Starts a server on free ports and waits until `models` are ready.
    pub fn start(repo: &Path, models: &[&str]) -> TritonServer {
        TritonServer::start_with(repo, models, &[])
    }

    /// The same with more tritonserver options. A server that cannot bind a port (another test
    /// process took it first, see [`free_port`]) is started again on other ports.
    pub fn start_with(repo: &Path, models: &[&str], extra_args: &[String]) -> TritonServer {
        let log_dir = tempfile::tempdir().expect("temporary directory");
        let n = SERVERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut server = TritonServer {
            child: None,
            repo: repo.to_path_buf(),
            extra_args: extra_args.to_vec(),
            grpc: free_port(),
            http: free_port(),
            metrics: free_port(),
            log: log_dir.path().join("tritonserver.log"),
            id: format!("clipfilter-test-{}-{n}", std::process::id()),
            shm_prefix: format!("clipfilter_test_{}_{n}_", std::process::id()),
            _log_dir: log_dir,
        };
        for attempt in 1.. {
            server.spawn();
            match server.try_ready(models) {
                Ok(()) => return server,
                Err(e) if attempt < 3 && server.log_tail(5).contains("already in use") => {
                    eprintln!("{e}; trying other ports");
                    server.kill();
                    server.grpc = free_port();
                    server.http = free_port();
                    server.metrics = free_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("server log file");
        let child = Command::new(triton_home().join("bin/tritonserver"))
            .arg(format!("--model-repository={}", self.repo.display()))
            .arg("--exit-on-error=false")
            .arg(format!("--id={}", self.id))
            .arg("--grpc-address=127.0.0.1")
            .arg(format!("--grpc-port={}", self.grpc))
            .arg("--http-address=127.0.0.1")
            .arg(format!("--http-port={}", self.http))
            .arg("--metrics-address=127.0.0.1")
            .arg(format!("--metrics-port={}", self.metrics))
            .arg(format!(
                "--backend-config=python,shm-region-prefix-name={}",
                self.shm_prefix
            ))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("cannot start tritonserver");
        self.child = Some(child);
    }

    pub fn grpc_url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.grpc)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("server running").id() as i32
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits (at most READY_TIMEOUT) for the server and `models` to answer ready over HTTP;
    /// panics with the server's log tail otherwise.
    pub fn wait_ready(&mut self, models: &[&str]) {
        if let Err(e) = self.try_ready(models) {
            panic!("{e}");
        }
    }

    /// Ready means: the server at our HTTP port is this one (its id), it and `models` answer
    /// ready, and this process alone listens on the gRPC port (a port shared with another
    /// server would send the tests' requests to it).
    fn try_ready(&mut self, models: &[&str]) -> Result<(), String> {
        let start = Instant::now();
        let id = format!("\"name\":\"{}\"", self.id);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!(
                    "tritonserver exited ({status}) before it was ready; its log ends with:\n{}",
                    self.log_tail(40)
                ));
            }
            let ours = http_get(self.http, "/v2").is_some_and(|(_, body)| body.contains(&id));
            let ready = ours
                && http_status(self.http, "/v2/health/ready") == Some(200)
                && models
                    .iter()
                    .all(|m| http_status(self.http, &format!("/v2/models/{m}/ready")) == Some(200));
            if ready {
                return sole_listener(self.pid(), self.grpc)
                    .map_err(|e| format!("tritonserver {} is ready but {e}", self.id));
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "tritonserver (grpc {}, http {}) not ready with {models:?} after {:?}; its log ends with:\n{}",
                    self.grpc,
                    self.http,
                    READY_TIMEOUT,
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.remove_shm();
    }

    /// Starts it again on the same ports and waits for `models`.
    pub fn restart(&mut self, models: &[&str]) {
        self.kill();
        self.spawn();
        self.wait_ready(models);
    }

    /// SIGSTOP / SIGCONT: a server that accepts connections and answers nothing.
    /// Freezing checks first that the server is alive and alone on its gRPC port: a stopped
    /// process answers nothing only if it is the one that would answer.
    pub fn freeze(&self, frozen: bool) {
        if frozen && let Err(e) = sole_listener(self.pid(), self.grpc) {
            panic!("cannot freeze tritonserver {}: {e}", self.id);
        }
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    fn remove_shm(&self) {
        // The python backend's stubs exit when the server is gone; their regions may stay behind.
        std::thread::sleep(Duration::from_millis(100));
        if let Ok(entries) = std::fs::read_dir("/dev/shm") {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&self.shm_prefix)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

impl Drop for TritonServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server does not die of SIGTERM: wake it before killing it.
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// Status code of an HTTP GET on 127.0.0.1:port, `None` when it cannot be had within 2 s.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).map(|(status, _)| status)
}

/// Status code and body of an HTTP GET on 127.0.0.1:port, `None` when it cannot be had within
/// 2 s.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

/// The tiny-clip repository with all four models, served by one server shared by the tests that
/// run at the same time (it stops when the last of them drops it).
pub struct Shared {
    pub server: TritonServer,
    _repo: tempfile::TempDir,
}

pub const TINY_MODELS: [&str; 4] = [
    "tiny-clip_image",
    "tiny-clip_image_fp16",
    "tiny-clip_image_uint8",
    "tiny-clip_text",
];

pub fn shared_server() -> Arc<Shared> {
    static SHARED: Mutex<Weak<Shared>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(shared) = slot.upgrade() {
        return shared;
    }
    let repo = model_repository("tiny-clip", "image,image_fp16,image_uint8,text");
    let server = TritonServer::start(repo.path(), &TINY_MODELS);
    let shared = Arc::new(Shared {
        server,
        _repo: repo,
    });
    *slot = Arc::downgrade(&shared);
    shared
}

/// A CA (`ca.pem`) and a server certificate (`server.pem`, `server.key`) for `localhost` / 127.0.0.1 it signed, made with openssl.
pub fn certificates(dir: &Path) {
    let sh = format!(
        r#"set -e
cd '{}'
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=clipfilter-test-ca -keyout ca.key -out ca.pem
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem
"#,
        dir.display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(sh)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "making test certificates with openssl failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The tritonserver options that serve gRPC over TLS with the certificates of [`certificates`]
/// in `dir`.
pub fn tls_args(dir: &Path) -> Vec<String> {
    let p = |f: &str| dir.join(f).display().to_string();
    vec![
        "--grpc-use-ssl=true".into(),
        format!("--grpc-server-cert={}", p("server.pem")),
        format!("--grpc-server-key={}", p("server.key")),
        format!("--grpc-root-cert={}", p("ca.pem")),
    ]
}

/// Runs `model` with Python onnxruntime on `inputs`; returns each output as (name, shape, f32).
pub fn onnxruntime(model: &Path, inputs: &[&Tensor]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut specs = Vec::new();
    for (i, t) in inputs.iter().enumerate() {
        let file = dir.path().join(format!("input{i}.bin"));
        std::fs::write(&file, t.data()).expect("write input");
        let dtype = match t.datatype() {
            DataType::Fp32 => "float32",
            DataType::Fp16 => "float16",
            DataType::Uint8 => "uint8",
            DataType::Int64 => "int64",
            other => panic!("no numpy type for {other}"),
        };
        specs.push(serde_json::json!({
            "name": t.name(), "dtype": dtype, "shape": t.shape(), "file": file,
        }));
    }
    let spec_path = dir.path().join("spec.json");
    let spec = serde_json::json!({ "model": model, "outdir": dir.path(), "inputs": specs });
    std::fs::write(&spec_path, spec.to_string()).expect("write spec");
    let script = repo_root().join("crates/triton/tests/triton/ort_run.py");
    let stdout = run_checked(
        Command::new(python()).arg(script).arg(&spec_path),
        "onnxruntime reference (tests/triton/ort_run.py)",
    );
    let outputs: Vec<serde_json::Value> =
        serde_json::from_str(stdout.trim()).expect("ort_run.py prints JSON");
    outputs
        .into_iter()
        .map(|o| {
            let shape: Vec<usize> = o["shape"]
                .as_array()
                .expect("shape")
                .iter()
                .map(|d| d.as_u64().expect("dimension") as usize)
                .collect();
            let bytes = std::fs::read(o["file"].as_str().expect("file")).expect("read output");
            let values = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (o["name"].as_str().expect("name").to_string(), shape, values)
        })
        .collect()
}

/// Largest absolute difference.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A deterministic RGB batch `[batch, 3, h, w]` (pseudo-random bytes, all 256 values present).
pub fn rgb_batch(batch: usize, h: usize, w: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..batch * 3 * h * w)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

/// `(float32(v * rescale) - mean[c]) / std[c]` as clipfilter's preprocessing computes it.
pub fn normalise(rgb: &[u8], plane: usize, n: &clipfilter_triton::fold::Normalisation) -> Vec<f32> {
    rgb.iter()
        .enumerate()
        .map(|(i, &v)| {
            let c = (i / plane) % 3;
            ((v as f64 * n.rescale) as f32 - n.mean[c]) / n.std[c]
        })
        .collect()
}
