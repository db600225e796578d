//! The daemon's configuration through the real binary: `check` lists every problem of a file at
//! once, and `[model] onnxruntime` chooses the ONNX Runtime library the daemon loads.

use std::path::{Path, PathBuf};

use crate::util::daemon::{Daemon, config_head, live_pattern};
use crate::util::{free_port, write_atomically};

/// `config_head` with `onnxruntime = "<library>"` in its `[model]` table.
fn head_with_library(state: &Path, http: u16, library: &Path) -> String {
    config_head(state, http).replacen(
        "[model]\n",
        &format!("[model]\nonnxruntime = \"{}\"\n", library.display()),
        1,
    )
}

/// The library tools/setup.sh installs.
fn installed_library() -> PathBuf {
    let lib = crate::util::local().join("onnxruntime/lib/libonnxruntime.so");
    assert!(
        lib.exists(),
        "{} is missing: run tools/setup.sh",
        lib.display()
    );
    lib
}

#[test]
fn check_lists_every_problem_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        "{}{}
[[pipeline]]
name = \"b\"
source = \"gopher://host/x\"
prompts = [\"red\", \"green\"]
enter = 0

[[pipeline]]
name = \"c\"
launch = \"videotestsrc\"
prompts = [\"red\", \"green\"]
colour = \"red\"
",
        head_with_library(
            &dir.path().join("state"),
            free_port(),
            Path::new("no-such-dir/libonnxruntime.so"),
        )
        .replace("threads = 1", "threads = 1\nvariant = \"fp64\""),
        live_pattern("a", "red").replace("interval = \"200ms\"", "interval = \"soon\""),
    );
    std::fs::write(&config, &text).unwrap();
    let line_of = |needle: &str| 1 + text.lines().position(|l| l.contains(needle)).unwrap();

    let (errors, stderr) = check_errors(&config);
    let expect = [
        (line_of("fp64"), "model.variant"),
        (line_of("soon"), "pipeline[0].interval"),
        (line_of("gopher"), "pipeline[1].source"),
        (line_of("enter = 0"), "pipeline[1].enter"),
        (line_of("colour"), "unknown field `colour`"),
    ];
    assert_eq!(errors.len(), expect.len(), "{stderr}");
    for (error, (line, what)) in errors.iter().zip(expect) {
        assert!(
            error.contains(config.to_str().unwrap())
                && error.contains(&format!("line {line},"))
                && error.contains(what),
            "line {line}, {what}: {stderr}"
        );
    }

    // Once the file itself is right, what needs the machine is checked: the library is missing.
    let text = format!(
        "{}{}",
        head_with_library(
            &dir.path().join("state"),
            free_port(),
            Path::new("no-such-dir/libonnxruntime.so"),
        ),
        live_pattern("a", "red"),
    );
    std::fs::write(&config, &text).unwrap();
    let out = crate::util::run(&["check", config.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let missing = dir.path().join("no-such-dir/libonnxruntime.so");
    assert!(
        stderr.contains(&format!("line {},", line_of("onnxruntime")))
            && stderr.contains("model.onnxruntime")
            && stderr.contains(&format!("{} does not exist", missing.display())),
        "{stderr}"
    );
    // `run` refuses it before loading anything, as bad input.
    let out = crate::util::run(&["run", "--config", config.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    // With the installed library it passes.
    std::fs::write(
        &config,
        format!(
            "{}{}",
            head_with_library(&dir.path().join("state"), free_port(), &installed_library()),
            live_pattern("a", "red"),
        ),
    )
    .unwrap();
    let out = crate::util::run(&["check", config.to_str().unwrap()]);
    let (stdout, stderr) = crate::util::text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("ok: daemon config, 1 pipeline"), "{stdout}");
}

#[test]
fn the_daemon_loads_the_onnxruntime_library_its_config_names() {
    // A link of its own to the installed library: the daemon's log names the path it loaded,
    // which the default search would never choose.
    let dir = tempfile::tempdir().unwrap();
    let ort = dir.path().join("ort");
    std::fs::create_dir(&ort).unwrap();
    let library = ort.join("libonnxruntime.so");
    std::os::unix::fs::symlink(
        std::fs::canonicalize(installed_library()).unwrap(),
        &library,
    )
    .unwrap();
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let text = |library: &Path| {
        format!(
            "{}{}",
            head_with_library(&dir.path().join("state"), http, library),
            live_pattern("cam", "red")
        )
    };
    std::fs::write(&config, text(Path::new("ort/libonnxruntime.so"))).unwrap();
    let daemon = Daemon::start_with(&config, Some(http), |c| c.env_remove("ORT_DYLIB_PATH"));
    let (_, loaded) = daemon.wait_log(0, "loaded ONNX Runtime");
    assert_eq!(
        loaded["fields"]["path"].as_str(),
        Some(library.to_str().unwrap()),
        "{loaded}"
    );
    daemon.wait_event(0, "cam matches red", |e| {
        e["pipeline"] == "cam" && e["label"] == "red" && e["state"] == "start"
    });

    // Another library on reload: it loads once per process, so the daemon says to restart and
    // leaves the pipelines alone.
    let log_at = daemon.stderr.len();
    write_atomically(&config, &text(&installed_library()));
    let (_, warning) = daemon.wait_log(log_at, "onnxruntime changed");
    assert!(
        warning["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("restart")),
        "{warning}"
    );
    let (_, reloaded) = daemon.wait_log(log_at, "configuration reloaded");
    let changes = reloaded["fields"]["changes"].as_str().unwrap_or_default();
    assert!(changes.contains("untouched: cam"), "{changes}");
    assert!(daemon.stop());
}

/// `clipfilterd <args>`, killed (and the test failed) if it has not ended within PATIENCE: a
/// command that waits on a FIFO would otherwise hang the test.
fn run_bounded(args: &[&str]) -> std::process::Output {
    use std::process::Stdio;
    let mut child = crate::util::clipfilterd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + crate::util::PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "clipfilterd {args:?} still running after {:?}: {}",
                crate::util::PATIENCE,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// A FIFO or a device given as a label set or a configuration is refused at once with a clear
/// error (issue 15): `check` neither waits for a writer nor reads `/dev/zero` until memory runs
/// out, and `run` reports the pipeline's error and stops on SIGTERM.
#[test]
fn special_files_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    mkfifo(&fifo);
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let with_labels = |labels: &str| {
        format!(
            "{}{}",
            config_head(&dir.path().join("state"), http),
            live_pattern("cam", "red").replace(
                "prompts = [\"red\", \"green\", \"blue\"]",
                &format!("labels = \"{labels}\"")
            )
        )
    };
    for (labels, what) in [
        ("fifo.toml", "is a FIFO (named pipe), not a regular file"),
        ("/dev/zero", "is a character device, not a regular file"),
    ] {
        std::fs::write(&config, with_labels(labels)).unwrap();
        let out = run_bounded(&["check", config.to_str().unwrap()]);
        let (_, stderr) = crate::util::text(&out);
        assert_eq!(out.status.code(), Some(2), "{labels}: {stderr}");
        assert!(
            stderr.contains("pipeline[0].labels") && stderr.contains(what),
            "{labels}: {stderr}"
        );
    }
    // The file given to `check` (a label set or a config) is held to the same rule.
    for file in [fifo.to_str().unwrap(), "/dev/zero"] {
        let out = run_bounded(&["check", file]);
        let (_, stderr) = crate::util::text(&out);
        assert_eq!(out.status.code(), Some(2), "{file}: {stderr}");
        assert!(stderr.contains("only regular files are read"), "{stderr}");
    }

    // `run`: the element refuses the FIFO, the pipeline says why, SIGTERM ends the daemon.
    std::fs::write(&config, with_labels("fifo.toml")).unwrap();
    let daemon = Daemon::start(&config, Some(http));
    let p = daemon.wait_pipeline("cam", "failed on the FIFO", |p| {
        p["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("FIFO"))
    });
    assert_ne!(p["state"], "running", "{p}");
    assert!(daemon.stop());
}

/// Values the element cannot take are refused by `check` (and so by `run`), from the one limits
/// table, instead of panicking a pipeline or restarting it forever (issue 15).
#[test]
fn check_refuses_values_the_element_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clipfilterd.toml");
    let pattern = live_pattern("cam", "red");
    let text = format!(
        "{}{}{}",
        config_head(&dir.path().join("state"), free_port()),
        pattern.replace(
            "interval = \"200ms\"",
            "interval = \"5200000h\"\nenter = 5000\nleave = 100000"
        ),
        live_pattern("nul", "red").replace("\"green\"", "\"gre\\u0000en\""),
    );
    std::fs::write(&config, &text).unwrap();
    let line_of = |needle: &str| 1 + text.lines().position(|l| l.contains(needle)).unwrap();
    let (errors, stderr) = check_errors(&config);
    let expect = [
        (
            line_of("5200000h"),
            "pipeline[0].interval",
            "at most one sample a day",
        ),
        (
            line_of("enter = 5000"),
            "pipeline[0].enter",
            "between 1 and 1000",
        ),
        (
            line_of("leave = 100000"),
            "pipeline[0].leave",
            "between 1 and 1000",
        ),
        (line_of("u0000"), "pipeline[1].prompts", "NUL byte"),
    ];
    assert_eq!(errors.len(), expect.len(), "{stderr}");
    for (error, (line, field, what)) in errors.iter().zip(expect) {
        assert!(
            error.contains(&format!("line {line},"))
                && error.contains(field)
                && error.contains(what),
            "line {line}, {field}, {what}: {stderr}"
        );
    }
}

/// A reload that changes an output's outbox bound says so (issue 15: it logged "outputs
/// updated: -").
#[test]
fn a_reload_names_the_outputs_it_changed() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        "{}{}",
        config_head(&dir.path().join("state"), http),
        live_pattern("cam", "red")
    );
    std::fs::write(&config, &text).unwrap();
    let daemon = Daemon::start(&config, Some(http));
    daemon.wait_event(0, "cam matches red", |e| e["state"] == "start");
    let log_at = daemon.stderr.len();
    write_atomically(
        &config,
        &text.replacen("path = \"-\"\n", "path = \"-\"\nmax_pending = 50\n", 1),
    );
    let (_, reloaded) = daemon.wait_log(log_at, "configuration reloaded");
    let changes = reloaded["fields"]["changes"].as_str().unwrap_or_default();
    assert!(
        changes.contains("outputs changed: log (max_pending 100000 -> 50)")
            && changes.contains("untouched: cam"),
        "{changes}"
    );
    assert!(daemon.stop());
}

/// A webhook's `Authorization` header and `user:password@` in its URL both authenticate: the
/// combination is refused rather than one silently replacing the other (issue 15).
#[test]
fn check_refuses_two_authentications_of_a_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clipfilterd.toml");
    let text = format!(
        "{}
[[output]]
name = \"hook\"
type = \"webhook\"
url = \"https://user:pass@example.com/hook\"
headers = {{ authorization = \"Bearer xyz\" }}
{}",
        config_head(&dir.path().join("state"), free_port()),
        live_pattern("cam", "red")
    );
    std::fs::write(&config, &text).unwrap();
    let out = crate::util::run(&["check", config.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("output[1].headers") && stderr.contains("give one of them"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pass@") && !stderr.contains("xyz"),
        "{stderr}"
    );
}

/// A decoded frame over the cap (`max_frame_pixels`, default 7680x4320) is a clear pipeline
/// error instead of gigabytes of memory (issue 15: an 8000x8000 source took 4 GB in seconds);
/// `check` holds the key to the limits table.
#[test]
fn frames_over_the_size_cap_are_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let config = dir.path().join("clipfilterd.toml");
    let pipeline = |name: &str, size: u32, extra: &str| {
        live_pattern(name, "red")
            .replace("width=64,height=64", &format!("width={size},height={size}"))
            .replace("framerate=10/1", "framerate=1/1")
            .replace(
                "interval = \"200ms\"",
                &format!("interval = \"200ms\"{extra}"),
            )
    };
    let head = config_head(&dir.path().join("state"), http);
    std::fs::write(
        &config,
        format!("{head}{}", pipeline("zero", 64, "\nmax_frame_pixels = 0")),
    )
    .unwrap();
    let out = crate::util::run(&["check", config.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pipeline[0].max_frame_pixels") && stderr.contains("between 1 and"),
        "{stderr}"
    );

    std::fs::write(
        &config,
        format!(
            "{head}{}{}{}",
            pipeline("huge", 8000, ""),
            pipeline("capped", 64, "\nmax_frame_pixels = 4000"),
            live_pattern("good", "red"),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config, Some(http));
    for (name, words) in [
        (
            "huge",
            "8000x8000 (64000000 pixels) are larger than max-frame-pixels=33177600",
        ),
        (
            "capped",
            "64x64 (4096 pixels) are larger than max-frame-pixels=4000",
        ),
    ] {
        let p = daemon.wait_pipeline(name, "refused its frames", |p| {
            p["last_error"]["message"].is_string()
        });
        let message = p["last_error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{name}: {message}");
    }
    daemon.wait_event(0, "good matches red", |e| {
        e["pipeline"] == "good" && e["state"] == "start"
    });
    assert!(daemon.stop());
}

/// `clipfilterd check CONFIG`, which must exit 2: its `error: ` lines, and the whole stderr.
fn check_errors(config: &Path) -> (Vec<String>, String) {
    let out = crate::util::run(&["check", config.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .map(String::from)
        .collect();
    (errors, stderr)
}
