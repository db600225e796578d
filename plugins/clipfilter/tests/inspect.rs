//! `gst-inspect-1.0 clipfilter` on the built plugin: it loads (without ONNX Runtime or a
//! model) and documents every property.

use std::path::PathBuf;
use std::process::Command;

/// The folder holding `libgstclipfilter.so` (cargo builds it before this test).
fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/inspect-<hash> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target folder")
        .to_path_buf();
    assert!(
        dir.join("libgstclipfilter.so").is_file(),
        "{} has no libgstclipfilter.so: `cargo test` builds only the rlib; run `cargo build --workspace` \
         first (tools/test.sh does)",
        dir.display()
    );
    dir
}

const PROPERTIES: [&str; 25] = [
    "model",
    "variant",
    "labels",
    "prompts",
    "templates",
    "interval",
    "threshold",
    "threshold-kind",
    "execution-provider",
    "require-provider",
    "action",
    "enter-samples",
    "leave-samples",
    "mode",
    "post-scores",
    "post-embedding",
    "post-frame",
    "label-set",
    "snapshot",
    "max-batch",
    "threads",
    "sync-timeout",
    "tensorrt-cache",
    "scene-gate",
    "stats",
];

#[test]
fn gst_inspect_documents_every_property() {
    let registry = tempfile::tempdir().expect("temporary folder");
    let out = Command::new("gst-inspect-1.0")
        .arg("clipfilter")
        .env("GST_PLUGIN_PATH", plugin_dir())
        .env("GST_REGISTRY", registry.path().join("registry.bin"))
        // The plugin must load without finding ONNX Runtime.
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")
        .output()
        .expect("gst-inspect-1.0 runs (apt package gstreamer1.0-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "gst-inspect-1.0 failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Filter/Analyzer/Video"), "{text}");
    let props = text
        .split("Element Properties:")
        .nth(1)
        .expect("a property section");
    for name in PROPERTIES {
        // "  name                : blurb" with a real sentence as blurb.
        let line = props
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")) && l.contains(" : "))
            .unwrap_or_else(|| panic!("property {name} is not listed:\n{props}"));
        let blurb = line.split_once(" : ").map_or("", |(_, b)| b.trim());
        assert!(
            blurb.len() > 20,
            "property {name} has no real description: {line}"
        );
    }
    for value in [
        "none",
        "drop",
        "blank",
        "pixelate",
        "async",
        "sync",
        "cosine",
        "quantized",
    ] {
        assert!(
            props.contains(&format!("): {value}")),
            "enum value {value} is not listed"
        );
    }
}
