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
        let s = compiled.score(e).unwrap();
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

/// `train-probe` on the train split into `out`.
fn train_probe(out: &Path) {
    let o = util::run(&[
        "train-probe",
        "--model",
        digits().to_str().unwrap(),
        "--examples",
        split("train").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
}

/// The sample label set with `seven` scored by the probe `probe.json` next to it.
fn labels_with_probe(dir: &Path) -> PathBuf {
    let sample = std::fs::read_to_string(digits().join("labels.toml")).unwrap();
    let edited = sample.replace(
        "name = \"seven\"\nmin_probability = 0.4",
        "name = \"seven\"\nprobe = \"probe.json\"\nmin_probability = 0.5",
    );
    assert_ne!(edited, sample);
    let p = dir.join("labels.toml");
    std::fs::write(&p, edited).unwrap();
    p
}

/// `classify --json` of `images` with `args`; (exit code, one JSON object per image, stderr).
fn classify(args: &[&str], images: &[PathBuf]) -> (i32, Vec<serde_json::Value>, String) {
    let mut all: Vec<String> = ["classify", "--json", "--top", "0"]
        .iter()
        .chain(args)
        .map(|s| s.to_string())
        .collect();
    all.extend(images.iter().map(|p| p.display().to_string()));
    let out = util::run(&all);
    let (stdout, stderr) = text(&out);
    let rows = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (out.status.code().unwrap_or(-1), rows, stderr)
}

fn row<'a>(result: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    result["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == name)
        .unwrap_or_else(|| panic!("no label {name} in {result}"))
}

#[test]
fn a_probe_label_is_scored_by_its_probe_in_the_library_and_the_cli() {
    use clipfilter::engine::{Engine, EngineConfig};
    use clipfilter::labels::{LabelDefaults, LabelSet};
    let tmp = tempfile::tempdir().unwrap();
    train_probe(&tmp.path().join("probe.json"));
    let labels = labels_with_probe(tmp.path());
    let probe = clipfilter::probe::Probe::from_file(&tmp.path().join("probe.json")).unwrap();
    let class = probe.classes.iter().position(|c| c == "seven").unwrap();

    // The library: the label's score is the probe's probability; the other labels keep their
    // zero-shot softmax among themselves.
    let engine = Engine::load(&EngineConfig::new(digits())).unwrap();
    let set = LabelSet::from_file(&labels).unwrap();
    let compiled = engine
        .compile_labels(&set, &LabelDefaults::default())
        .unwrap();
    let seven = compiled.index_of("seven").unwrap();
    assert!(compiled.is_probe(seven) && !compiled.is_probe(0));
    let held = clipfilter::calibrate::Examples::scan(&split("heldout")).unwrap();
    let emb = clipfilter::calibrate::embed_examples(&engine, &held.examples, |_| {}).unwrap();
    let (mut hits, mut sevens, mut false_hits) = (0, 0, 0);
    for (ex, e) in held.examples.iter().zip(&emb) {
        let s = compiled.score(e).unwrap();
        let want = probe.predict(e)[class] as f32;
        assert!((s.probability[seven] - want).abs() < 1e-5, "{ex:?}");
        assert_eq!(s.cosine[seven], s.probability[seven]);
        let others: f32 = (0..s.probability.len())
            .filter(|i| *i != seven)
            .map(|i| s.probability[i])
            .sum();
        assert!((others - 1.0).abs() < 1e-4, "{others}");
        let hit = compiled.labels[seven].passes(s.cosine[seven], s.probability[seven]);
        if ex.label == "seven" {
            sevens += 1;
            hits += usize::from(hit);
        } else {
            false_hits += usize::from(hit);
        }
    }
    println!("probe label `seven` on held-out: {hits}/{sevens} hits, {false_hits} false");
    assert!(hits * 2 >= sevens, "{hits}/{sevens}, {false_hits}");

    // The CLI scores it the same way (the same library path).
    let pictures: Vec<PathBuf> = held
        .examples
        .iter()
        .filter(|e| e.label == "seven")
        .take(3)
        .map(|e| e.path.clone())
        .collect();
    let m = digits();
    let (code, rows, stderr) = classify(
        &[
            "--model",
            m.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
        ],
        &pictures,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rows.len(), 3);
    for (r, p) in rows.iter().zip(&pictures) {
        let i = held.examples.iter().position(|e| e.path == *p).unwrap();
        let want = probe.predict(&emb[i])[class];
        let got = row(r, "seven")["probability"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
    }

    // The probe belongs to the digits model: with another model, `classify` and `check` of a
    // daemon config say so and exit 2.
    let (code, _, stderr) = classify(
        &[
            "--model",
            util::oracle().to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
        ],
        &pictures[..1],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("this probe was trained on model `digits`")
            && stderr.contains("train it again"),
        "{stderr}"
    );
    let config = tmp.path().join("daemon.toml");
    let mut text = crate::util::daemon::config_head(&tmp.path().join("state"), util::free_port());
    text.push_str(&crate::util::daemon::live_pattern("cam", "red").replace(
        "prompts = [\"red\", \"green\", \"blue\"]",
        &format!("labels = {:?}", labels.display().to_string()),
    ));
    std::fs::write(&config, text).unwrap();
    let out = util::run(&["check", config.to_str().unwrap()]);
    let (stdout, stderr) = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("pipeline[0].labels")
            && stderr.contains("this probe was trained on model `digits`"),
        "{stderr}"
    );
    // A probe without the label's class, and a label set naming a missing probe.
    std::fs::write(
        &labels,
        std::fs::read_to_string(&labels).unwrap().replace(
            "name = \"three\"",
            "name = \"three\"\nprobe = \"nowhere.json\"",
        ),
    )
    .unwrap();
    let out = util::run(&["check", labels.to_str().unwrap()]);
    let (_, stderr) = util::text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("nowhere.json"), "{stderr}");
}

/// The first `n` train pictures of `digit`, sorted.
fn train_pictures(digit: &str, n: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(split("train").join(digit))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.truncate(n);
    files
}

#[test]
fn image_labels_are_the_mean_of_their_pictures_and_reembed_only_what_changed() {
    use clipfilter::engine::{Engine, EngineConfig};
    use clipfilter::labels::{LabelDefaults, LabelSet};
    use clipfilter::zeroshot::ensemble;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sevens = dir.join("examples/seven");
    std::fs::create_dir_all(&sevens).unwrap();
    for p in train_pictures("seven", 5) {
        std::fs::copy(&p, sevens.join(p.file_name().unwrap())).unwrap();
    }
    // Not a picture (skipped with a warning naming it) and a folder that matches the glob
    // (not a regular file: ignored).
    std::fs::write(sevens.join("notes.png"), "not a picture").unwrap();
    std::fs::create_dir(sevens.join("folder.png")).unwrap();
    let labels = dir.join("labels.toml");
    std::fs::write(
        &labels,
        r#"# pictures alone, pictures with prompts, prompts alone
[defaults]
templates = ["a photo of the digit {}"]

[[label]]
name = "seven"
images = ["examples/seven/*.png"]
min_cosine = 0.5

[[label]]
name = "three"
images = ["examples/seven/000.png"]
prompts = ["three"]

[[label]]
name = "eight"
"#,
    )
    .unwrap();
    let engine = Engine::load(&EngineConfig::new(digits())).unwrap();
    let set = LabelSet::from_file(&labels).unwrap();
    assert_eq!(set.labels[0].prompts, Vec::<String>::new());
    let compiled = engine
        .compile_labels(&set, &LabelDefaults::default())
        .unwrap();
    assert_eq!(engine.label_images_embedded(), 5);
    assert_eq!(
        compiled.skipped_images.len(),
        1,
        "{:?}",
        compiled.skipped_images
    );
    assert!(compiled.skipped_images[0].0.ends_with("notes.png"));
    // The label's embedding is the normalised mean of its pictures' (and texts') embeddings.
    let mut pictures: Vec<PathBuf> = std::fs::read_dir(&sevens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with("notes.png"))
        .collect();
    pictures.sort();
    let each: Vec<Vec<f32>> = pictures
        .iter()
        .map(|p| engine.embed_image_file(p).unwrap())
        .collect();
    let three_text = engine.embed_texts(&["a photo of the digit three"]).unwrap();
    let seven_row = ensemble(&each);
    let three_row = ensemble(&[three_text[0].clone(), each[0].clone()]);
    let probe = engine
        .embed_image_file(&train_pictures("seven", 10)[9])
        .unwrap();
    let s = compiled.score(&probe).unwrap();
    assert!((s.cosine[0] - util::cosine(&probe, &seven_row)).abs() < 1e-5);
    assert!((s.cosine[1] - util::cosine(&probe, &three_row)).abs() < 1e-5);
    // A picture of the set scores close to its label.
    let own = compiled.score(&each[0]).unwrap();
    assert!(
        own.cosine[0] > 0.8 && own.probability[0] > own.probability[2],
        "{own:?}"
    );

    // A reload embeds only the pictures that changed.
    engine
        .compile_labels(&set, &LabelDefaults::default())
        .unwrap();
    assert_eq!(engine.label_images_embedded(), 5);
    std::fs::copy(&train_pictures("eight", 1)[0], &pictures[1]).unwrap();
    let again = engine
        .compile_labels(&set, &LabelDefaults::default())
        .unwrap();
    assert_eq!(engine.label_images_embedded(), 6);
    assert_ne!(again.score(&probe).unwrap().cosine[0], s.cosine[0]);

    // Every picture of a label unusable, or none matching: clear errors naming them.
    std::fs::write(
        &labels,
        "[[label]]\nname = \"seven\"\nimages = [\"examples/seven/notes.*\"]\nmin_cosine = 0.5\n",
    )
    .unwrap();
    let set = LabelSet::from_file(&labels).unwrap();
    let e = engine
        .compile_labels(&set, &LabelDefaults::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("none of its pictures could be used") && e.contains("notes.png"),
        "{e}"
    );
    std::fs::write(
        &labels,
        "[[label]]\nname = \"seven\"\nimages = [\"examples/van/*.jpg\"]\nmin_cosine = 0.5\n",
    )
    .unwrap();
    let out = util::run(&["check", labels.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no picture (regular file) matches") && stderr.contains("van/*.jpg"),
        "{stderr}"
    );
}

#[test]
fn classify_image_ranks_pictures_by_their_likeness_to_example_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let seven = tmp.path().join("a seven.png");
    let three = tmp.path().join("three.png");
    std::fs::copy(&train_pictures("seven", 1)[0], &seven).unwrap();
    std::fs::copy(&train_pictures("three", 1)[0], &three).unwrap();
    let m = digits();
    let args = [
        "--model",
        m.to_str().unwrap(),
        "--image",
        seven.to_str().unwrap(),
        "--image",
        three.to_str().unwrap(),
        "--label",
        "a photo of the digit eight",
    ];
    let (code, rows, stderr) = classify(&args, &[seven.clone(), three.clone()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(rows.len(), 2);
    // Each picture is its own label's example: cosine 1.
    assert!(
        (row(&rows[0], "a seven")["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-4,
        "{}",
        rows[0]
    );
    assert!(
        (row(&rows[1], "three")["cosine"].as_f64().unwrap() - 1.0).abs() < 1e-4,
        "{}",
        rows[1]
    );
    assert!(
        row(&rows[0], "a photo of the digit eight")["cosine"]
            .as_f64()
            .unwrap()
            < 0.99
    );
    // A file that is not a picture is a clear error.
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, "text").unwrap();
    let (code, _, stderr) = classify(
        &[
            "--model",
            m.to_str().unwrap(),
            "--image",
            bad.to_str().unwrap(),
            "--label",
            "x",
        ],
        &[seven],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("bad.png"), "{stderr}");
}

/// Scores of every example of both splits against the sample label set, through the library;
/// (picture, scores per label of the kind its threshold uses).
fn sample_scores() -> Vec<(PathBuf, Vec<f32>)> {
    use clipfilter::engine::{Engine, EngineConfig};
    use clipfilter::labels::{LabelDefaults, LabelSet};
    let engine = Engine::load(&EngineConfig::new(digits())).unwrap();
    let set = LabelSet::from_file(&digits().join("labels.toml")).unwrap();
    let compiled = engine
        .compile_labels(&set, &LabelDefaults::default())
        .unwrap();
    let mut out = Vec::new();
    for s in ["train", "heldout"] {
        let ex = clipfilter::calibrate::Examples::scan(&split(s)).unwrap();
        let emb = clipfilter::calibrate::embed_examples(&engine, &ex.examples, |_| {}).unwrap();
        for (x, e) in ex.examples.iter().zip(&emb) {
            let s = compiled.score(e).unwrap();
            let per = compiled
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| clipfilter::calibrate::score_of(l.threshold, &s, i))
                .collect();
            out.push((x.path.clone(), per));
        }
    }
    out
}

#[test]
fn a_playing_element_picks_up_calibrate_write() {
    use crate::element::{MS, element_message, left, pipeline};
    use gst::prelude::*;
    use gstclipfilter::clipfilter::messages::Message;
    let tmp = tempfile::tempdir().unwrap();
    let labels = labels_copy(tmp.path());
    // What --write will change: the thresholds calibrate chooses on the train split.
    let (code, plan, stderr) = calibrate(
        &labels,
        &split("train"),
        tmp.path(),
        &["--no-plots", "--precision", "0.9"],
    );
    assert_eq!(code, 0, "{stderr}");
    // A picture whose score lies between a label's hand-set and calibrated thresholds (the
    // farthest from both), so that the element's verdict on it flips with the new file.
    let names = ["three", "seven", "eight"];
    let set = clipfilter::labels::LabelSet::from_file(&labels).unwrap();
    let mut best: Option<(f32, &str, PathBuf, bool)> = None;
    for (path, scores) in sample_scores() {
        for name in names {
            let l = label(&plan, name);
            let (b, a) = (
                l["before"].as_f64().unwrap() as f32,
                l["after"].as_f64().unwrap() as f32,
            );
            let i = set.labels.iter().position(|x| x.name == name).unwrap();
            let s = scores[i];
            let margin = (s - b).min(a - s).max((b - s).min(s - a));
            if margin > 0.0 && best.as_ref().is_none_or(|x| margin > x.0) {
                best = Some((margin, name, path.clone(), s >= b));
            }
        }
    }
    let (margin, name, picture, matched_before) = best.expect("a picture between the thresholds");
    println!(
        "{name}: {} (margin {margin}), matched before: {matched_before}",
        picture.display()
    );

    let p = pipeline(&format!(
        "filesrc location={} ! pngdec ! videoconvert ! imagefreeze is-live=true \
         ! video/x-raw,format=RGB,framerate=10/1 \
         ! clipfilter name=cf model={} labels={} interval={} post-scores=true ! fakesink",
        picture.display(),
        digits().display(),
        labels.display(),
        100 * MS
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let deadline = std::time::Instant::now() + util::PATIENCE;
    let next = || {
        let msg = bus
            .timed_pop(left(deadline))
            .expect("the expected messages in time");
        if let gst::MessageView::Error(e) = msg.view() {
            panic!("pipeline error: {}", e.error());
        }
        element_message(&msg)
    };
    // Follows `name`'s Start and End messages until `n` samples are scored (after the
    // labels-reloaded message when `after_reload`).
    let (mut matching, mut reloaded) = (false, false);
    let run = |n: usize, after_reload: bool, matching: &mut bool, reloaded: &mut bool| {
        let mut scored = 0;
        while scored < n {
            match next() {
                Some(Message::Scores(_)) => scored += usize::from(!after_reload || *reloaded),
                Some(Message::Match(m)) if m.label == name => {
                    *matching = m.transition == clipfilter::matcher::Transition::Start;
                }
                Some(Message::LabelsReloaded(r)) => {
                    assert_eq!(r.path, labels);
                    *reloaded = true;
                }
                _ => {}
            }
        }
    };
    // Before: the hand-set threshold decides.
    run(3, false, &mut matching, &mut reloaded);
    assert_eq!(matching, matched_before, "before calibrate --write");
    // calibrate --write rewrites the file; the element reloads it and the new threshold flips
    // the verdict.
    let (code, written, stderr) = calibrate(
        &labels,
        &split("train"),
        tmp.path(),
        &["--no-plots", "--precision", "0.9", "--write"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(written["written"], true);
    // After: three samples scored after the labels-reloaded message, with the new threshold.
    run(3, true, &mut matching, &mut reloaded);
    assert!(reloaded, "no labels-reloaded message");
    assert_eq!(matching, !matched_before, "after calibrate --write");
    p.set_state(gst::State::Null).unwrap();
}

/// A playing element reloads its labels when only a label's picture changes, or a picture is
/// added to a pattern's folder (the label file itself untouched), and uses the new pictures.
#[test]
fn a_playing_element_reloads_when_a_labels_picture_changes() {
    use crate::element::{MS, element_message, left, pipeline};
    use gst::prelude::*;
    use gstclipfilter::clipfilter::messages::Message;
    let tmp = tempfile::tempdir().unwrap();
    let pics = tmp.path().join("pics");
    std::fs::create_dir_all(&pics).unwrap();
    let picture = |path: &Path, rgb: [u8; 3]| {
        image::RgbImage::from_pixel(32, 32, image::Rgb(rgb))
            .save(path)
            .unwrap();
    };
    picture(&pics.join("a.png"), [255, 0, 0]);
    let labels = tmp.path().join("labels.toml");
    std::fs::write(
        &labels,
        "[[label]]\nname = \"look\"\nimages = [\"pics/*.png\"]\nmin_cosine = 0.9\n",
    )
    .unwrap();
    let before = std::fs::read(&labels).unwrap();
    let p = pipeline(&format!(
        "videotestsrc is-live=true pattern=solid-color foreground-color=0xffff0000 \
         ! video/x-raw,format=RGB,width=64,height=64,framerate=10/1 \
         ! clipfilter name=cf model={} labels={} interval={} ! fakesink",
        util::oracle().display(),
        labels.display(),
        100 * MS
    ));
    let bus = p.bus().unwrap();
    p.set_state(gst::State::Playing).unwrap();
    let deadline = std::time::Instant::now() + util::PATIENCE;
    // The next `look` transition (true: started) and whether a reload came before it.
    let next_look = || {
        let mut reloaded = false;
        loop {
            let msg = bus
                .timed_pop(left(deadline))
                .expect("the expected messages in time");
            if let gst::MessageView::Error(e) = msg.view() {
                panic!("pipeline error: {}", e.error());
            }
            match element_message(&msg) {
                Some(Message::Match(m)) if m.label == "look" => {
                    return (
                        m.transition == clipfilter::matcher::Transition::Start,
                        reloaded,
                    );
                }
                Some(Message::LabelsReloaded(r)) => {
                    assert_eq!(r.path, labels);
                    reloaded = true;
                }
                _ => {}
            }
        }
    };
    // A red picture on red frames: matches.
    assert_eq!(next_look(), (true, false));
    // The picture becomes green: the element reloads and the label stops matching.
    picture(&pics.join("a.png"), [0, 255, 0]);
    assert_eq!(next_look(), (false, true));
    // A red picture added beside it: the label is the mean of red and green (cosine 0.71 < 0.9
    // still), so swap the green one for a second red one: matching again after a reload.
    picture(&pics.join("b.png"), [255, 0, 0]);
    std::fs::remove_file(pics.join("a.png")).unwrap();
    assert_eq!(next_look(), (true, true));
    assert_eq!(
        std::fs::read(&labels).unwrap(),
        before,
        "the label file was not touched"
    );
    p.set_state(gst::State::Null).unwrap();
}
