//! The engine against the reference implementation (transformers / OpenAI CLIP), on the
//! committed fixtures and the real sample photos; and the CLI's handling of bad input.

use std::path::{Path, PathBuf};

use clipfilter::encoder::{ImageEncoder, SessionConfig, TextEncoder, l2_normalize};
use clipfilter::engine::{Engine, EngineConfig};
use clipfilter::labels::{LabelDefaults, LabelSet, Threshold};
use clipfilter::model::{ModelDir, Variant};
use clipfilter::text::ClipTokenizer;
use clipfilter::zeroshot::Templates;

use crate::util::{self, cosine, floats, formula_pixels, json, max_abs_diff};

fn reference(model: &str) -> serde_json::Value {
    json(
        &util::fixtures()
            .join("reference")
            .join(format!("{model}.json")),
    )
}

#[test]
fn tokenizer_ids_match_openai_and_transformers() {
    let cases = json(&util::fixtures().join("reference/tokenizer_cases.json"));
    let tok = ClipTokenizer::from_file(&util::model("tiny-clip").join("tokenizer.json"), 77, None)
        .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let mut all_agree = 0;
    let mut fast_differs = Vec::new();
    let mut wrong = Vec::new();
    for case in cases["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ours = tok.encode(text).unwrap();
        let (openai, slow, fast) = (
            ids(&case["openai"]),
            ids(&case["hf_slow"]),
            ids(&case["hf_fast"]),
        );
        if ours != openai || ours != slow {
            wrong.push(format!(
                "{text:?}: ours {ours:?} openai {openai:?} transformers {slow:?}"
            ));
        }
        if openai == slow && slow == fast && ids(&case["open_clip"]) == fast && ours == openai {
            all_agree += 1;
        }
        if fast != ours {
            fast_differs.push(text.to_string());
        }
    }
    assert!(
        wrong.is_empty(),
        "ids differ from OpenAI's SimpleTokenizer or transformers' CLIPTokenizer:\n{}",
        wrong.join("\n")
    );
    assert!(
        all_agree >= 30,
        "only {all_agree} strings where all references agree"
    );
    eprintln!(
        "tokenizer: {} strings identical to OpenAI's SimpleTokenizer and transformers' CLIPTokenizer; {all_agree} identical to all four references (with open_clip and tokenizer.json alone); tokenizer.json alone (no ftfy/html cleaning) differs on {:?}",
        cases["cases"].as_array().unwrap().len(),
        fast_differs
    );
}

#[test]
fn over_long_text_keeps_the_end_token() {
    let tok = ClipTokenizer::from_file(&util::model("tiny-clip").join("tokenizer.json"), 77, None)
        .unwrap();
    let ids = tok.encode(&"word ".repeat(300)).unwrap();
    let (bos, eos, _) = tok.special_ids();
    assert_eq!(ids.len(), 77);
    assert_eq!((ids[0], ids[76]), (bos, eos));
    assert_eq!(tok.encode("").unwrap(), vec![bos, eos]);
}

fn image_encoder(model: &str) -> (ModelDir, ImageEncoder) {
    let dir = ModelDir::open(util::model(model), Variant::Fp32).unwrap();
    let size = dir.preprocess.output_size().unwrap();
    let enc = ImageEncoder::load(&dir.vision_onnx, size, &SessionConfig::default()).unwrap();
    (dir, enc)
}

#[test]
fn image_embeddings_match_transformers_at_batch_1_3_17() {
    for model in ["tiny-clip", "tiny-clip-odd"] {
        let r = reference(model);
        let (_, mut enc) = image_encoder(model);
        let (h, w) = enc.input_size();
        for case in r["image"].as_array().unwrap() {
            let batch = case["batch"].as_u64().unwrap() as usize;
            let pixels = formula_pixels(batch, h as usize, w as usize);
            let mut out = Vec::new();
            enc.encode(&pixels, batch, &mut out).unwrap();
            let want: Vec<f32> = case["embeds"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(floats)
                .collect();
            let diff = max_abs_diff(&out, &want);
            eprintln!("{model} image tower, batch {batch}: max |ours - transformers| = {diff:.2e}");
            assert!(
                diff < 1e-4,
                "{model} batch {batch}: max abs difference {diff}"
            );
        }
    }
}

#[test]
fn text_embeddings_match_transformers() {
    for model in ["tiny-clip", "tiny-clip-odd"] {
        let r = reference(model);
        let dir = ModelDir::open(util::model(model), Variant::Fp32).unwrap();
        let mut enc = TextEncoder::load(&dir, &SessionConfig::default()).unwrap();
        let cases = r["text"].as_array().unwrap();
        let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
        for (case, text) in cases.iter().zip(&texts) {
            let want_ids: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(
                enc.tokenizer().encode(text).unwrap(),
                want_ids,
                "{model}: ids of {text:?}"
            );
        }
        let got = enc.embed(&texts).unwrap();
        let mut worst = 0f32;
        for (case, g) in cases.iter().zip(&got) {
            worst = worst.max(max_abs_diff(g, &floats(&case["embeds"])));
        }
        eprintln!(
            "{model} text tower ({} texts, batched): max |ours - transformers| = {worst:.2e}",
            texts.len()
        );
        assert!(worst < 1e-4, "{model}: text embeddings differ by {worst}");
    }
}

#[test]
fn zero_shot_probabilities_match_clip() {
    for model in ["tiny-clip", "tiny-clip-odd"] {
        let r = reference(model);
        let engine = Engine::load(&EngineConfig::new(util::model(model))).unwrap();
        assert_eq!(
            engine.model().logit_scale as f64,
            r["logit_scale"].as_f64().unwrap() as f32 as f64,
            "{model}: logit scale"
        );
        let (h, w) = engine.model().preprocess.output_size().unwrap();
        let mut worst = (0f32, 0f32);
        for case in r["zeroshot"].as_array().unwrap() {
            let n = case["images"].as_u64().unwrap() as usize;
            let names: Vec<String> = case["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_string())
                .collect();
            let templates: Templates = case["templates"].as_str().unwrap().parse().unwrap();
            let set = LabelSet::from_prompts(&names, templates.clone()).unwrap();
            let defaults = LabelDefaults {
                threshold: Threshold::Cosine(0.0),
                ..LabelDefaults::default()
            };
            let labels = engine.compile_labels(&set, &defaults).unwrap();
            let images = engine
                .embed_pixels(&formula_pixels(n, h as usize, w as usize))
                .unwrap();
            for (i, image) in images.iter().enumerate() {
                let s = labels.score(image).unwrap();
                let want_p = floats(&case["probs"][i]);
                let want_c = floats(&case["cosine"][i]);
                worst.0 = worst.0.max(max_abs_diff(&s.probability, &want_p));
                worst.1 = worst.1.max(max_abs_diff(&s.cosine, &want_c));
            }
        }
        eprintln!(
            "{model} zero-shot: max |Δprobability| = {:.2e}, max |Δcosine| = {:.2e}",
            worst.0, worst.1
        );
        assert!(
            worst.0 < 1e-4 && worst.1 < 1e-4,
            "{model}: zero-shot differs: {worst:?}"
        );
    }
}

#[test]
fn preprocessing_of_real_photos_matches_clip_image_processor() {
    for model in ["tiny-clip", "tiny-clip-odd"] {
        let refs = util::local().join("fixtures/photos").join(model);
        let index = refs.join("index.json");
        assert!(
            index.is_file(),
            "{} is missing: run tools/setup.sh (it extracts the sample photos and computes the references)",
            index.display()
        );
        let engine = Engine::load(&EngineConfig::new(util::model(model))).unwrap();
        let index = json(&index);
        let photos_dir = util::local().join("media/photos");
        let entries = index["photos"].as_array().expect("photos list");
        assert!(
            entries.len() >= 6,
            "only {} reference photos",
            entries.len()
        );
        let (mut sum, mut count, mut worst_cos) = (0f64, 0usize, 1f32);
        // Worst pixel difference for lossless (PNG) and JPEG photos, kept apart: JPEG adds the
        // decoders' own differences.
        let (mut worst_png, mut worst_jpeg) = (0f32, 0f32);
        for e in entries {
            let photo = photos_dir.join(e["photo"].as_str().unwrap());
            let npy = refs.join(e["npy"].as_str().unwrap());
            let (shape, want) = util::read_npy_f32(&npy);
            let ours = engine.preprocess_file(&photo).unwrap();
            assert_eq!(
                ours.len(),
                shape.iter().product::<usize>(),
                "{}",
                photo.display()
            );
            let d = max_abs_diff(&ours, &want);
            if photo.extension().is_some_and(|e| e == "png") {
                worst_png = worst_png.max(d);
            } else {
                worst_jpeg = worst_jpeg.max(d);
            }
            sum += ours
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() as f64)
                .sum::<f64>();
            count += ours.len();
            let embeds = engine
                .embed_pixels(&[ours.clone(), want.clone()].concat())
                .unwrap();
            let c = cosine(&embeds[0], &embeds[1]);
            worst_cos = worst_cos.min(c);
            eprintln!(
                "{model} {}: max |Δpixel| = {d:.4}, embedding cosine = {c:.6}",
                photo.file_name().unwrap().to_string_lossy()
            );
        }
        let mean = sum / count as f64;
        let step = 1.0 / 255.0 / 0.2613;
        eprintln!(
            "{model}: {} photos vs CLIPImageProcessor: mean |Δ| = {mean:.2e} ({:.2} steps); max |Δ| PNG = {worst_png:.4} ({:.1} steps), JPEG = {worst_jpeg:.4} ({:.1} steps); min embedding cosine {worst_cos:.6}",
            entries.len(),
            mean / step as f64,
            worst_png / step,
            worst_jpeg / step
        );
        // One 8-bit step after normalisation is 1/255/std ~ 0.015. Resampling matches PIL's to
        // one step (fixed-point coefficient rounding); JPEG decoding (zune-jpeg here, libjpeg-turbo
        // in Pillow) rounds the IDCT and chroma upsampling a little differently.
        assert!(
            worst_png <= 1.01 * step,
            "{model}: PNG max pixel difference {worst_png}"
        );
        assert!(
            worst_jpeg <= 5.0 * step,
            "{model}: JPEG max pixel difference {worst_jpeg}"
        );
        assert!(
            mean < 0.25 * step as f64,
            "{model}: mean pixel difference {mean}"
        );
        assert!(worst_cos >= 0.999, "{model}: embedding cosine {worst_cos}");
    }
}

#[test]
fn embeddings_are_normalised_and_towers_agree_in_width() {
    let engine = Engine::load(&EngineConfig::new(util::model("tiny-clip-odd"))).unwrap();
    let (h, w) = engine.model().preprocess.output_size().unwrap();
    let e = engine
        .embed_pixels(&formula_pixels(2, h as usize, w as usize))
        .unwrap();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].len(), engine.dim());
    let mut n = e[0].clone();
    l2_normalize(&mut n);
    assert!(max_abs_diff(&n, &e[0]) < 1e-6);
}

mod cli {
    use super::*;

    fn solid_png(dir: &Path, name: &str, rgb: [u8; 3]) -> PathBuf {
        let path = dir.join(name);
        image::RgbImage::from_pixel(96, 80, image::Rgb(rgb))
            .save(&path)
            .unwrap();
        path
    }

    #[test]
    fn classify_ranks_oracle_colours() {
        let tmp = tempfile::tempdir().unwrap();
        let red = solid_png(tmp.path(), "red.png", [250, 10, 10]);
        let green = solid_png(tmp.path(), "green.png", [10, 240, 20]);
        let model = util::oracle();
        let out = util::run(&[
            "classify",
            "--model",
            model.to_str().unwrap(),
            "--label",
            "red",
            "--label",
            "green",
            "--label",
            "blue",
            "--json",
            red.to_str().unwrap(),
            green.to_str().unwrap(),
        ]);
        let (stdout, stderr) = util::text(&out);
        assert!(out.status.success(), "{stderr}");
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["results"][0]["label"], "red");
        assert_eq!(lines[1]["results"][0]["label"], "green");
        assert!(lines[0]["results"][0]["probability"].as_f64().unwrap() > 0.9);

        let table = util::run(&[
            "classify",
            "-m",
            model.to_str().unwrap(),
            "--label",
            "red",
            "--label",
            "blue",
            red.to_str().unwrap(),
        ]);
        let (stdout, stderr) = util::text(&table);
        assert!(table.status.success(), "{stderr}");
        assert!(
            stdout.contains("red.png")
                && stdout
                    .lines()
                    .nth(2)
                    .unwrap()
                    .trim_start()
                    .starts_with("red"),
            "{stdout}"
        );
    }

    /// What the error cases are given: a temporary folder for the files a case writes, a good
    /// image and a good model.
    struct Given {
        dir: PathBuf,
        img: String,
        oracle: String,
    }

    impl Given {
        /// Writes `bytes` to `name` in the temporary folder; returns the path.
        fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> String {
            let path = self.dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path.display().to_string()
        }

        /// A copy of fixture model `model` in the temporary folder, under `name`.
        fn model_copy(&self, model: &str, name: &str) -> PathBuf {
            let copy = self.dir.join(name);
            copy_dir(&util::model(model), &copy);
            copy
        }

        /// `classify` of the good image with the label set `toml`, written to `name`.
        fn classify_labels(&self, name: &str, toml: &str) -> Vec<String> {
            let labels = self.file(name, toml);
            args(&[
                "classify",
                "-m",
                &self.oracle,
                "--labels",
                &labels,
                &self.img,
            ])
        }

        /// `classify` of the good image by the good model with one label and `option value`.
        fn classify_with(&self, option: &str, value: &str) -> Vec<String> {
            args(&[
                "classify",
                "-m",
                &self.oracle,
                "--label",
                "a",
                option,
                value,
                &self.img,
            ])
        }

        /// `classify -m <model> --label a --label b <image>`.
        fn classify(&self, model: &Path, image: &str) -> Vec<String> {
            let model = model.display().to_string();
            args(&[
                "classify", "-m", &model, "--label", "a", "--label", "b", image,
            ])
        }
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    /// One way of getting the CLI wrong: what is wrong, how to provoke it (it writes its files
    /// and returns the arguments), what stderr must say, and the exit code.
    type Case = (&'static str, fn(&Given) -> Vec<String>, &'static str, i32);

    const BAD_INPUT: [Case; 13] = [
        (
            "the model folder does not exist",
            |g| g.classify(Path::new("/nonexistent/model"), &g.img),
            "no such folder",
            2,
        ),
        (
            "the model folder lacks its image tower",
            |g| {
                let model = g.model_copy("oracle-clip", "missing");
                std::fs::remove_file(model.join("onnx/vision_model.onnx")).unwrap();
                g.classify(&model, &g.img)
            },
            "vision_model.onnx is missing",
            2,
        ),
        (
            "the image tower is not an ONNX file",
            |g| {
                let model = g.model_copy("oracle-clip", "corrupt");
                std::fs::write(
                    model.join("onnx/vision_model.onnx"),
                    b"this is not a protobuf",
                )
                .unwrap();
                g.classify(&model, &g.img)
            },
            "cannot be loaded",
            2,
        ),
        (
            // tiny-clip's image tower (width 32) with tiny-clip-odd's text tower (width 24).
            "the towers do not belong together",
            |g| {
                let model = g.model_copy("tiny-clip", "mixed");
                std::fs::copy(
                    util::model("tiny-clip-odd").join("onnx/text_model.onnx"),
                    model.join("onnx/text_model.onnx"),
                )
                .unwrap();
                g.classify(&model, &g.img)
            },
            "do not belong together",
            2,
        ),
        (
            "an image file holds text",
            |g| g.classify(Path::new(&g.oracle), &g.file("notes.png", "just text")),
            "notes.png: not a readable image",
            2,
        ),
        (
            "a JPEG file is cut short",
            |g| {
                let mut jpeg = Vec::new();
                image::RgbImage::from_pixel(64, 64, image::Rgb([9, 9, 9]))
                    .write_to(
                        &mut std::io::Cursor::new(&mut jpeg),
                        image::ImageFormat::Jpeg,
                    )
                    .unwrap();
                let cut = g.file("cut.jpg", &jpeg[..jpeg.len() / 2]);
                g.classify(Path::new(&g.oracle), &cut)
            },
            "cut.jpg: not a readable image",
            2,
        ),
        (
            "the labels file is not TOML",
            |g| {
                g.classify_labels(
                    "bad.toml",
                    "[[label]]\nname = \"red\"\nmin_cosine = 0.2\n\n[[label]\nname = \"x\"\n",
                )
            },
            "bad.toml: line 5",
            2,
        ),
        (
            "a label names an unknown template set",
            |g| {
                g.classify_labels(
                    "tpl.toml",
                    "[[label]]\nname = \"red\"\nmin_cosine = 0.2\ntemplates = \"imagenet81\"\n",
                )
            },
            "unknown template set `imagenet81`",
            2,
        ),
        (
            "--templates names an unknown set",
            |g| g.classify_with("--templates", "nope"),
            "unknown template set `nope`",
            2,
        ),
        (
            "classify gets a label set without labels",
            |g| g.classify_labels("empty.toml", EMPTY),
            "the label set is empty",
            2,
        ),
        (
            "check gets a label set without labels",
            |g| args(&["check", &g.file("empty.toml", EMPTY)]),
            "the label set is empty",
            2,
        ),
        (
            "neither --label nor --labels",
            |g| args(&["classify", "-m", &g.oracle, &g.img]),
            "--labels",
            2,
        ),
        (
            "an unknown execution provider",
            |g| g.classify_with("--providers", "gpu"),
            "expected tensorrt, cuda or cpu",
            2,
        ),
    ];

    /// A label set with defaults and no label.
    const EMPTY: &str = "[defaults]\nmin_cosine = 0.2\n";

    #[test]
    fn bad_input_gives_clear_errors_and_exit_codes() {
        let tmp = tempfile::tempdir().unwrap();
        let given = Given {
            dir: tmp.path().to_path_buf(),
            img: solid_png(tmp.path(), "ok.png", [1, 2, 3])
                .display()
                .to_string(),
            oracle: util::oracle().display().to_string(),
        };
        // Every case runs; the failures are reported together.
        let mut failures = Vec::new();
        for (wrong, provoke, says, code) in BAD_INPUT {
            let args = provoke(&given);
            let out = util::run(&args);
            let (stdout, stderr) = util::text(&out);
            if out.status.code() != Some(code) || !stderr.contains(says) {
                failures.push(format!(
                    "{wrong}: clipfilterd {args:?}\n  want exit code {code} and {says:?} on stderr, \
                     got exit code {:?}\n  stdout: {stdout}\n  stderr: {stderr}",
                    out.status.code()
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {} bad inputs were not handled as expected:\n\n{}",
            failures.len(),
            BAD_INPUT.len(),
            failures.join("\n\n")
        );
    }

    #[test]
    fn require_provider_fails_without_a_gpu_build() {
        let img_dir = tempfile::tempdir().unwrap();
        let img = solid_png(img_dir.path(), "x.png", [5, 5, 5]);
        let oracle = util::oracle();
        let out = util::run(&[
            "classify",
            "-m",
            oracle.to_str().unwrap(),
            "--label",
            "a",
            "--label",
            "b",
            "--providers",
            "cuda,cpu",
            "--require-provider",
            img.to_str().unwrap(),
        ]);
        let (_, stderr) = util::text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("execution provider cuda"), "{stderr}");
        // Without --require-provider it runs on the CPU, and says loudly that CUDA was not used.
        let out = util::run(&[
            "classify",
            "-m",
            oracle.to_str().unwrap(),
            "--label",
            "a",
            "--label",
            "b",
            "--providers",
            "cuda,cpu",
            img.to_str().unwrap(),
        ]);
        let (_, stderr) = util::text(&out);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains("ERROR") && stderr.contains("cuda"),
            "{stderr}"
        );
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let dest = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &dest);
            } else {
                std::fs::copy(entry.path(), dest).unwrap();
            }
        }
    }
}
