//! Calibration and linear probes on the trained digits fixture (tests/fixtures/digits), with
//! real ONNX Runtime sessions: `clipfilterd calibrate` and `clipfilterd train-probe` end to end,
//! and the engine's parts against the scikit-learn reference (reference/digits-probe.json).

use std::path::{Path, PathBuf};

use crate::util::{self, fixtures, json, text};

fn digits() -> PathBuf {
    util::model("digits")
}

fn split(name: &str) -> PathBuf {
    digits().join("examples").join(name)
}

/// A copy of the sample label set (hand-set thresholds) in a temporary folder.
fn labels_copy(dir: &Path) -> PathBuf {
    let p = dir.join("labels.toml");
    std::fs::copy(digits().join("labels.toml"), &p).unwrap();
    p
}

/// `calibrate --json` on `examples` with `extra` flags; (exit code, report, stderr).
fn calibrate(
    labels: &Path,
    examples: &Path,
    plots: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut args: Vec<String> = [
        "calibrate",
        "--model",
        digits().to_str().unwrap(),
        "--labels",
        labels.to_str().unwrap(),
        "--examples",
        examples.to_str().unwrap(),
        "--plots",
        plots.to_str().unwrap(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = util::run(&args);
    let (stdout, stderr) = text(&out);
    let report = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), report, stderr)
}

fn label<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["labels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["label"] == name)
        .unwrap_or_else(|| panic!("no label {name} in {report}"))
}

/// Held-out precision of a calibrated label may fall this far below the asked 0.9: the held-out
/// split has 30 positives per label, so a label firing on ~25 of them measures its precision
/// with a standard error of sqrt(0.9 * 0.1 / 25) = 0.06, and the threshold was chosen on 120
/// other pictures (its train precision sits just above 0.9 by construction); 0.15 is 2.5
/// standard errors.
const PRECISION_TOLERANCE: f64 = 0.15;

#[test]
fn calibrated_thresholds_hold_their_precision_on_heldout() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = labels_copy(tmp.path());
    let hand = std::fs::read_to_string(&labels).unwrap();
    // The hand-set thresholds on held-out pictures, for comparison.
    let (code, before, stderr) = calibrate(&labels, &split("heldout"), tmp.path(), &["--no-plots"]);
    assert_eq!(code, 0, "{stderr}");
    // Calibrate on train and write the file.
    let plots = tmp.path().join("plots");
    let (code, train, stderr) = calibrate(
        &labels,
        &split("train"),
        &plots,
        &["--precision", "0.9", "--write"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(train["written"], true);
    assert_ne!(std::fs::read_to_string(&labels).unwrap(), hand);
    // The calibrated thresholds on held-out pictures: the "before" columns of a run there.
    let (code, after, stderr) = calibrate(&labels, &split("heldout"), tmp.path(), &["--no-plots"]);
    assert_eq!(code, 0, "{stderr}");
    let mut lines = Vec::new();
    for name in ["three", "seven", "eight"] {
        let t = label(&train, name);
        assert!(t["precision"].as_f64().unwrap() >= 0.9, "{t}");
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("precision / recall"),
            "{name}.svg"
        );
        let (h, c) = (label(&before, name), label(&after, name));
        assert_eq!(c["before"].as_f64(), t["after"].as_f64(), "{name}");
        let (p, r) = (
            c["before_precision"].as_f64().unwrap(),
            c["before_recall"].as_f64().unwrap(),
        );
        lines.push(format!(
            "{name}: {} {:.4} -> {:.4}; held-out precision {:.3} recall {:.3} (hand-set: {:.3} / {:.3})",
            t["score"],
            t["before"].as_f64().unwrap(),
            t["after"].as_f64().unwrap(),
            p,
            r,
            h["before_precision"].as_f64().unwrap(),
            h["before_recall"].as_f64().unwrap()
        ));
        assert!(
            (p - 0.9).abs() <= PRECISION_TOLERANCE,
            "{name}: held-out precision {p} is not within {PRECISION_TOLERANCE} of 0.9\n{}",
            lines.join("\n")
        );
        assert!(r > 0.0, "{name}: recall {r}");
    }
    eprintln!("{}", lines.join("\n"));
}

#[test]
fn write_changes_only_the_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = labels_copy(tmp.path());
    let (code, report, stderr) = calibrate(
        &labels,
        &split("train"),
        tmp.path(),
        &["--precision", "0.9", "--write", "--no-plots"],
    );
    assert_eq!(code, 0, "{stderr}");
    let got = std::fs::read_to_string(&labels).unwrap();
    let after = |n: &str| label(&report, n)["after"].as_f64().unwrap() as f32;
    // The golden file: the sample set with seven's and eight's numbers replaced in place and a
    // min_probability line added to three (it took the [defaults] one).
    let want = std::fs::read_to_string(digits().join("labels.toml"))
        .unwrap()
        .replace(
            "name = \"three\"\n",
            &format!("name = \"three\"\nmin_probability = {}\n", after("three")),
        )
        .replace(
            "min_probability = 0.4\n",
            &format!("min_probability = {}\n", after("seven")),
        )
        .replace(
            "min_cosine = 0.6\n",
            &format!("min_cosine = {}\n", after("eight")),
        );
    assert_eq!(got, want);
}

/// Copies the train split's pictures of `folders` into `dir`, at most `n` per folder.
fn copy_examples(dir: &Path, folders: &[&str], n: usize) {
    for f in folders {
        std::fs::create_dir_all(dir.join(f)).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(split("train").join(f))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for p in files.iter().take(n) {
            std::fs::copy(p, dir.join(f).join(p.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn too_few_examples_fail_that_label_only() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = labels_copy(tmp.path());
    let ex = tmp.path().join("examples");
    copy_examples(&ex, &["seven", "eight", "none"], 30);
    copy_examples(&ex, &["three"], 6);
    std::fs::write(ex.join("seven/notes.txt"), "not a picture").unwrap();
    let (code, report, stderr) = calibrate(&labels, &ex, tmp.path(), &["--write", "--no-plots"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("skipping") && stderr.contains("notes.txt"),
        "{stderr}"
    );
    let three = label(&report, "three");
    assert!(three["after"].is_null(), "{three}");
    let e = three["error"].as_str().unwrap();
    assert!(
        e.contains("6 positive") && e.contains("at least 10 positive"),
        "{e}"
    );
    assert!(
        stderr.contains("label `three`: too few examples"),
        "{stderr}"
    );
    for name in ["seven", "eight"] {
        assert!(label(&report, name)["after"].is_number(), "{report}");
    }
    // The others were written; three keeps the default.
    let set = clipfilter::labels::LabelSet::from_file(&labels).unwrap();
    assert_eq!(
        set.labels[0].threshold,
        Some(clipfilter::labels::Threshold::Probability(0.5))
    );
    assert_ne!(
        set.labels[1].threshold,
        Some(clipfilter::labels::Threshold::Probability(0.4))
    );
}

#[test]
fn bad_example_folders_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let labels = labels_copy(tmp.path());
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let unknown = tmp.path().join("unknown");
    copy_examples(&unknown, &["seven", "none"], 3);
    std::fs::create_dir_all(unknown.join("van")).unwrap();
    std::fs::copy(
        split("train").join("seven/000.png"),
        unknown.join("van/a.png"),
    )
    .unwrap();
    let negative = tmp.path().join("negative");
    copy_examples(&negative, &["seven", "none"], 3);
    std::fs::create_dir_all(negative.join("zero")).unwrap();
    std::fs::copy(
        split("train").join("seven/000.png"),
        negative.join("zero/a.png"),
    )
    .unwrap();
    let no_pictures = tmp.path().join("no-pictures");
    std::fs::create_dir_all(no_pictures.join("seven")).unwrap();
    std::fs::write(no_pictures.join("seven/readme.md"), "x").unwrap();
    let cases: [(&str, PathBuf, &str); 5] = [
        ("missing folder", tmp.path().join("nope"), "no such folder"),
        ("empty folder", empty, "no label folders"),
        (
            "a folder that is no label",
            unknown,
            "folder `van` is not a label",
        ),
        (
            "a negative label's folder",
            negative,
            "`zero` is a negative label",
        ),
        (
            "a label folder without pictures",
            no_pictures,
            "no pictures in this folder",
        ),
    ];
    let mut failures = Vec::new();
    for (what, dir, want) in cases {
        let (code, _, stderr) = calibrate(&labels, &dir, tmp.path(), &["--no-plots"]);
        if code != 2 || !stderr.contains(want) {
            failures.push(format!("{what}: exit {code}, wanted `{want}` in: {stderr}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn example_embeddings_match_the_reference() {
    use clipfilter::calibrate::Examples;
    use clipfilter::engine::{Engine, EngineConfig};
    let engine = Engine::load(&EngineConfig::new(digits())).unwrap();
    let ex = Examples::scan(&split("heldout")).unwrap();
    let got = clipfilter::calibrate::embed_examples(&engine, &ex.examples, |_| {}).unwrap();
    let reference = json(&fixtures().join("reference/digits-examples.json"));
    let mut worst = 0f32;
    for r in reference["examples"].as_array().unwrap() {
        let path = fixtures().join(r["path"].as_str().unwrap());
        if let Some(i) = ex.examples.iter().position(|e| e.path == path) {
            let mut want = util::floats(&r["embeds"]);
            clipfilter::encoder::l2_normalize(&mut want);
            worst = worst.max(util::max_abs_diff(&got[i], &want));
        }
    }
    // Measured 2.1e-3: the Rust decoder/resizer against PIL's bicubic on 40x40 -> 32x32.
    assert!(worst < 3e-3, "normalised embeddings differ by {worst}");
}

/// The reference's train split: L2-normalised f64 embeddings (digits-examples.json) and class
/// indices, in the order of digits-probe.json's `train.paths`.
fn reference_train() -> (Vec<Vec<f64>>, Vec<usize>, serde_json::Value) {
    let probe = json(&fixtures().join("reference/digits-probe.json"));
    let examples = json(&fixtures().join("reference/digits-examples.json"));
    let classes: Vec<String> = probe["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for p in probe["train"]["paths"].as_array().unwrap() {
        let e = examples["examples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == *p)
            .unwrap();
        x.push(clipfilter::probe::features(&util::floats(&e["embeds"])));
        y.push(classes.iter().position(|c| e["label"] == **c).unwrap());
    }
    (x, y, probe)
}

#[test]
fn probe_solver_matches_scikit_learn() {
    use clipfilter::probe;
    let (x, y, reference) = reference_train();
    // The folds and the C sweep.
    let folds = probe::stratified_folds(&y, 4, 5);
    let want: Vec<usize> = reference["cv"]["folds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(folds, want);
    let grid = probe::c_grid();
    assert_eq!(
        util::floats(&reference["cv"]["C_grid"]),
        grid.iter().map(|c| *c as f32).collect::<Vec<_>>()
    );
    let cv = probe::cross_validate(&x, &y, 4, &folds, &grid, || {}).unwrap();
    for (got, want) in cv
        .iter()
        .zip(reference["cv"]["mean_log_loss"].as_array().unwrap())
    {
        let want = want.as_f64().unwrap();
        assert!(
            (got.mean_log_loss - want).abs() < 1e-4,
            "C {}: {} vs {want}",
            got.c,
            got.mean_log_loss
        );
    }
    let c = probe::best_c(&cv).unwrap();
    assert_eq!(c, reference["C"].as_f64().unwrap());
    // The fit at that C: coefficients, centred intercepts and held-out probabilities.
    let fit = probe::fit(&x, &y, 4, c).unwrap();
    let coef: Vec<f64> = reference["coef"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    let worst = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f64::max)
    };
    assert!(
        worst(&fit.coef, &coef) < 1e-3,
        "coef differ by {}",
        worst(&fit.coef, &coef)
    );
    let b: Vec<f64> = reference["intercept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let mean = b.iter().sum::<f64>() / 4.0;
    let b: Vec<f64> = b.iter().map(|v| v - mean).collect();
    assert!(
        worst(&fit.intercept, &b) < 1e-3,
        "intercepts differ by {}",
        worst(&fit.intercept, &b)
    );
    let examples = json(&fixtures().join("reference/digits-examples.json"));
    let mut probs_diff = 0f64;
    for (p, want) in reference["heldout"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference["heldout"]["probs"].as_array().unwrap())
    {
        let e = examples["examples"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == *p)
            .unwrap();
        let got = fit.predict(&probe::features(&util::floats(&e["embeds"])));
        let want: Vec<f64> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        probs_diff = probs_diff.max(worst(&got, &want));
    }
    assert!(
        probs_diff < 1e-3,
        "held-out probabilities differ by {probs_diff}"
    );
    eprintln!(
        "probe vs scikit-learn: C = {c}, coef max diff {:.2e}, held-out probs max diff {probs_diff:.2e}, {} Newton iterations, gradient {:.1e}",
        worst(&fit.coef, &coef),
        fit.iterations,
        fit.gradient_max_abs
    );
}

#[test]
fn train_probe_beats_zero_shot_on_heldout() {
    use clipfilter::engine::{Engine, EngineConfig};
    use clipfilter::labels::{LabelDefaults, LabelSet};
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("probe.json");
    let o = util::run(&[
        "train-probe",
        "--model",
        digits().to_str().unwrap(),
        "--examples",
        split("train").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--heldout",
        split("heldout").to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("C = 10;"), "{stdout}");
    let probe = clipfilter::probe::Probe::from_file(&out).unwrap();
    assert_eq!(probe.classes, vec!["eight", "seven", "three", "none"]);

    // Probe and zero-shot (the sample label set's top label, a negative counting as none) on
    // the held-out pictures, through the same engine.
    let engine = Engine::load(&EngineConfig::new(digits())).unwrap();
    let held = clipfilter::calibrate::Examples::scan(&split("heldout")).unwrap();
    let emb = clipfilter::calibrate::embed_examples(&engine, &held.examples, |_| {}).unwrap();
    let set = LabelSet::from_file(&digits().join("labels.toml")).unwrap();
    let compiled = engine
        .compile_labels(&set, &LabelDefaults::default())
        .unwrap();
    let reference = json(&fixtures().join("reference/digits-probe.json"));
    let ref_classes: Vec<&str> = reference["classes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let (mut probe_right, mut zs_right, mut diff) = (0, 0, 0f64);
    for (ex, e) in held.examples.iter().zip(&emb) {
        let p = probe.predict(e);
        if probe.classes[clipfilter::probe::argmax(&p)] == ex.label {
            probe_right += 1;
        }
        let s = compiled.classes.score(e).unwrap();
        let top = clipfilter::probe::argmax(
            &s.probability
                .iter()
                .map(|v| f64::from(*v))
                .collect::<Vec<_>>(),
        );
        let l = &compiled.labels[top];
        let guess = if l.negative { "none" } else { l.name.as_str() };
        if guess == ex.label {
            zs_right += 1;
        }
        // Against scikit-learn's probabilities for the same picture.
        let rel = ex
            .path
            .strip_prefix(fixtures())
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let i = reference["heldout"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .position(|q| *q == rel)
            .unwrap();
        for (ci, name) in ref_classes.iter().enumerate() {
            let mine = p[probe.classes.iter().position(|c| c == name).unwrap()];
            diff = diff.max((mine - reference["heldout"]["probs"][i][ci].as_f64().unwrap()).abs());
        }
    }
    let n = held.examples.len();
    eprintln!(
        "held-out accuracy: probe {probe_right}/{n}, zero-shot {zs_right}/{n}; probe vs scikit-learn max prob diff {diff:.2e}"
    );
    assert!(
        probe_right > zs_right,
        "probe {probe_right} vs zero-shot {zs_right}"
    );
    assert_eq!(
        zs_right, 90,
        "zero-shot as measured by the fixture's README"
    );
    // Measured 5.3e-3: these are clipfilter's own embeddings of the PNGs, which differ from the
    // reference's (transformers' preprocessing) by up to 2e-3; on identical embeddings the solver
    // agrees within 1e-3 (probe_solver_matches_scikit_learn).
    assert!(
        diff < 1e-2,
        "probabilities differ from scikit-learn's by {diff}"
    );
}
