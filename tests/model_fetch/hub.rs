//! A Hugging Face hub stand-in on the loopback interface, speaking the protocol `huggingface_hub`
//! uses: `GET /api/models/{repo}/revision/{rev}?blobs=true` and `GET /{repo}/resolve/{rev}/{path}`,
//! which redirects LFS files to a "CDN" on another host (127.0.0.2) as the real hub does, with
//! `Range` support (206 + `Content-Range`).
//!
//! It is a small HTTP/1.1 server on `std::net` rather than tiny_http because the interruption
//! test needs to cut a keep-alive connection in the middle of a body, which tiny_http cannot do.
//! Knobs: cut a file's body after N bytes, corrupt a file's bytes, fail the listing with 503.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sha1::Sha1;
use sha2::{Digest, Sha256};

/// A file of a test repository.
#[derive(Debug, Clone)]
pub struct RepoFile {
    pub path: String,
    pub content: Vec<u8>,
    /// Stored in LFS: listed with a sha256, served through the CDN redirect.
    pub lfs: bool,
    /// Computed once: the CDN looks files up by it on every request.
    sha256: String,
}

impl RepoFile {
    pub fn new(path: &str, content: Vec<u8>, lfs: bool) -> Self {
        let sha256 = hex(&Sha256::digest(&content));
        RepoFile {
            path: path.to_owned(),
            content,
            lfs,
            sha256,
        }
    }

    /// The sha256 of the content, as hex.
    pub fn sha256(&self) -> String {
        self.sha256.clone()
    }

    /// The git blob id of the content (for LFS files the hub lists the pointer file's id instead).
    pub fn git_blob_id(&self) -> String {
        git_blob_id(&self.content)
    }

    /// The name of its blob in the hub cache: the sha256 for LFS files, the git blob id otherwise.
    pub fn blob_name(&self) -> String {
        if self.lfs {
            self.sha256()
        } else {
            self.git_blob_id()
        }
    }

    fn pointer(&self) -> String {
        format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
            self.sha256(),
            self.content.len()
        )
    }
}

/// A test repository at one commit.
#[derive(Debug, Clone)]
pub struct Repo {
    pub id: String,
    pub commit: String,
    /// Branch names that point at `commit`.
    pub branches: Vec<String>,
    pub files: Vec<RepoFile>,
    /// When set, every hub request must carry `Authorization: Bearer {token}` (a gated repo).
    pub token: Option<String>,
}

impl Repo {
    pub fn file(&self, path: &str) -> &RepoFile {
        self.files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no file {path} in the test repo"))
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// `hub` (127.0.0.1) or `cdn` (127.0.0.2).
    pub host: &'static str,
    /// Path and query.
    pub target: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
    pub user_agent: Option<String>,
}

#[derive(Default)]
struct Faults {
    /// File path -> (bytes of body to send before cutting the connection, how many more times).
    cut: HashMap<String, (usize, u32)>,
    corrupt: HashSet<String>,
    /// How many more listing requests to answer with 503.
    fail_listing: u32,
}

struct State {
    repos: Vec<Repo>,
    cdn_base: String,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Logged>>,
    connections: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// The running server; stopped when dropped.
pub struct HubServer {
    hub_addr: SocketAddr,
    cdn_addr: SocketAddr,
    state: Arc<State>,
    threads: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HubServer {
    /// Starts the hub on 127.0.0.1 and its CDN on 127.0.0.2, both on ephemeral ports.
    pub fn start(repos: Vec<Repo>) -> Self {
        let hub = TcpListener::bind("127.0.0.1:0").expect("bind the hub on 127.0.0.1");
        let cdn = TcpListener::bind("127.0.0.2:0").expect("bind the CDN on 127.0.0.2");
        let hub_addr = hub.local_addr().unwrap();
        let cdn_addr = cdn.local_addr().unwrap();
        let state = Arc::new(State {
            repos,
            cdn_base: format!("http://{cdn_addr}"),
            faults: Mutex::default(),
            log: Mutex::default(),
            connections: Mutex::default(),
            stop: AtomicBool::new(false),
        });
        let threads = [(hub, "hub"), (cdn, "cdn")]
            .into_iter()
            .map(|(listener, host)| {
                let state = state.clone();
                std::thread::spawn(move || accept_loop(listener, host, state))
            })
            .collect();
        HubServer {
            hub_addr,
            cdn_addr,
            state,
            threads,
        }
    }

    /// The endpoint, as `HF_ENDPOINT` would hold it.
    pub fn url(&self) -> String {
        format!("http://{}", self.hub_addr)
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.state.log).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.state.log).clear();
    }

    /// Cuts the connection after `bytes` bytes of `path`'s body, the next `times` times it is sent.
    pub fn cut_after(&self, path: &str, bytes: usize, times: u32) {
        lock(&self.state.faults)
            .cut
            .insert(path.to_owned(), (bytes, times));
    }

    /// Serves `path` with wrong bytes (same length) while `on`.
    pub fn corrupt(&self, path: &str, on: bool) {
        let mut faults = lock(&self.state.faults);
        if on {
            faults.corrupt.insert(path.to_owned());
        } else {
            faults.corrupt.remove(path);
        }
    }

    /// Answers the next `times` listing requests with 503.
    pub fn fail_listing(&self, times: u32) {
        lock(&self.state.faults).fail_listing = times;
    }

    /// Stops listening and closes every open connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        for addr in [self.hub_addr, self.cdn_addr] {
            let _ = TcpStream::connect(addr); // wakes the accept loop
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for c in lock(&self.state.connections).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for HubServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn accept_loop(listener: TcpListener, host: &'static str, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if let Ok(clone) = stream.try_clone() {
            lock(&state.connections).push(clone);
        }
        let state = state.clone();
        std::thread::spawn(move || serve_connection(stream, host, &state));
    }
}

/// A response to write; `cut_after` ends the connection after that many body bytes.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    cut_after: Option<usize>,
}

impl Reply {
    fn new(status: u16, body: Vec<u8>) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body,
            cut_after: None,
        }
    }

    fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    fn error(status: u16, code: &str, message: &str) -> Self {
        Reply::new(
            status,
            serde_json::json!({ "error": message })
                .to_string()
                .into_bytes(),
        )
        .header("Content-Type", "application/json")
        .header("X-Error-Code", code)
        .header("X-Error-Message", message)
    }
}

fn serve_connection(stream: TcpStream, host: &'static str, state: &State) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
            return;
        };
        let (method, target) = (method.to_owned(), target.to_owned());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
            }
        }
        lock(&state.log).push(Logged {
            host,
            target: target.clone(),
            range: headers.get("range").cloned(),
            authorization: headers.get("authorization").cloned(),
            user_agent: headers.get("user-agent").cloned(),
        });
        let reply = if method == "GET" {
            route(state, host, &target, &headers)
        } else {
            Reply::new(405, Vec::new())
        };
        if !write_reply(&mut writer, reply) {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
        if headers
            .get("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return;
        }
    }
}

/// Writes `reply`; false when the connection was cut (or broke).
fn write_reply(w: &mut TcpStream, reply: Reply) -> bool {
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
        reply.status,
        reply.body.len()
    );
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let body = match reply.cut_after {
        Some(n) => &reply.body[..n.min(reply.body.len())],
        None => &reply.body[..],
    };
    let ok = w
        .write_all(head.as_bytes())
        .and_then(|()| w.write_all(body))
        .and_then(|()| w.flush())
        .is_ok();
    ok && reply.cut_after.is_none()
}

fn route(state: &State, host: &str, target: &str, headers: &HashMap<String, String>) -> Reply {
    let (path, _query) = target.split_once('?').unwrap_or((target, ""));
    if host == "cdn" {
        return match path.strip_prefix("/cdn/") {
            Some(sha) => match state
                .repos
                .iter()
                .flat_map(|r| &r.files)
                .find(|f| f.lfs && f.sha256() == sha)
            {
                Some(file) => serve_content(state, file, headers),
                None => Reply::new(404, Vec::new()),
            },
            None => Reply::new(404, Vec::new()),
        };
    }
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let Some((repo_id, revision)) = rest.split_once("/revision/") else {
            return Reply::new(404, Vec::new());
        };
        return listing(state, repo_id, &percent_decode(revision), headers);
    }
    // /{org}/{name}/resolve/{revision}/{path}
    let Some((repo_id, rest)) = path.trim_start_matches('/').split_once("/resolve/") else {
        return Reply::new(404, Vec::new());
    };
    let Some((revision, file_path)) = rest.split_once('/') else {
        return Reply::new(404, Vec::new());
    };
    let repo = match find_repo(state, repo_id, headers) {
        Ok(repo) => repo,
        Err(reply) => return reply,
    };
    if !(revision == repo.commit || repo.branches.iter().any(|b| b == revision)) {
        return Reply::error(404, "RevisionNotFound", "Invalid rev id");
    }
    let file_path = percent_decode(file_path);
    let Some(file) = repo.files.iter().find(|f| f.path == file_path) else {
        return Reply::error(404, "EntryNotFound", "Entry not found");
    };
    if file.lfs {
        Reply::new(302, Vec::new())
            .header(
                "Location",
                format!("{}/cdn/{}?signature=x", state.cdn_base, file.sha256()),
            )
            .header("X-Repo-Commit", repo.commit.as_str())
            .header("X-Linked-Etag", format!("\"{}\"", file.sha256()))
            .header("X-Linked-Size", file.content.len().to_string())
            .header(
                "ETag",
                format!("\"{}\"", git_blob_id(file.pointer().as_bytes())),
            )
    } else {
        serve_content(state, file, headers)
            .header("X-Repo-Commit", repo.commit.as_str())
            .header("ETag", format!("\"{}\"", file.git_blob_id()))
    }
}

fn find_repo<'s>(
    state: &'s State,
    id: &str,
    headers: &HashMap<String, String>,
) -> Result<&'s Repo, Reply> {
    let Some(repo) = state.repos.iter().find(|r| r.id == id) else {
        return Err(Reply::error(404, "RepoNotFound", "Repository not found"));
    };
    if let Some(token) = &repo.token
        && headers.get("authorization") != Some(&format!("Bearer {token}"))
    {
        return Err(Reply::error(
            401,
            "GatedRepo",
            "Access to this model is restricted",
        ));
    }
    Ok(repo)
}

fn listing(
    state: &State,
    repo_id: &str,
    revision: &str,
    headers: &HashMap<String, String>,
) -> Reply {
    {
        let mut faults = lock(&state.faults);
        if faults.fail_listing > 0 {
            faults.fail_listing -= 1;
            return Reply::new(503, b"busy".to_vec()).header("Retry-After", "0");
        }
    }
    let repo = match find_repo(state, repo_id, headers) {
        Ok(repo) => repo,
        Err(reply) => return reply,
    };
    if !(revision == repo.commit || repo.branches.iter().any(|b| b == revision)) {
        return Reply::error(
            404,
            "RevisionNotFound",
            &format!("Invalid rev id: {revision}"),
        );
    }
    let siblings: Vec<serde_json::Value> = repo
        .files
        .iter()
        .map(|f| {
            let size = f.content.len();
            if f.lfs {
                serde_json::json!({
                    "rfilename": f.path,
                    "size": size,
                    "blobId": git_blob_id(f.pointer().as_bytes()),
                    "lfs": { "sha256": f.sha256(), "size": size, "pointerSize": f.pointer().len() },
                })
            } else {
                serde_json::json!({ "rfilename": f.path, "size": size, "blobId": f.git_blob_id() })
            }
        })
        .collect();
    let body = serde_json::json!({
        "_id": "0123",
        "id": repo.id,
        "modelId": repo.id,
        "sha": repo.commit,
        "private": false,
        "siblings": siblings,
    });
    Reply::new(200, body.to_string().into_bytes()).header("Content-Type", "application/json")
}

/// The file's bytes (or the requested range of them), with the faults applied.
fn serve_content(state: &State, file: &RepoFile, headers: &HashMap<String, String>) -> Reply {
    let mut faults = lock(&state.faults);
    let mut content = file.content.clone();
    if faults.corrupt.contains(&file.path) {
        for b in content.iter_mut().step_by(4099) {
            *b ^= 0x5a;
        }
    }
    let total = content.len();
    let start = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    let mut reply = match start {
        Some(start) if start >= total => {
            Reply::new(416, Vec::new()).header("Content-Range", format!("bytes */{total}"))
        }
        Some(start) => Reply::new(206, content[start..].to_vec()).header(
            "Content-Range",
            format!("bytes {start}-{}/{total}", total - 1),
        ),
        None => Reply::new(200, content),
    }
    .header("Accept-Ranges", "bytes");
    if reply.status != 416
        && let Some((bytes, times)) = faults.cut.get_mut(&file.path)
        && *times > 0
    {
        *times -= 1;
        reply.cut_after = Some(*bytes);
    }
    reply
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `git hash-object` of `content`.
pub fn git_blob_id(content: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", content.len()).as_bytes());
    h.update(content);
    hex(&h.finalize())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic pseudo-random bytes (xorshift64*), different for each seed.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
