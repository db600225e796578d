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

    let out = crate::util::run(&["check", config.to_str().unwrap()]);
    let (_, stderr) = crate::util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
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
