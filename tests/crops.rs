//! What the model sees of a frame: the `pad` fit against its PIL reference, the whole picture
//! (pad, crops) against the centre crop, tiles and regions finding a small thing and saying
//! where, actions on the matched part only, resolution changes, bad input; and the measurement
//! behind "best over crops" (rather than the mean).
//!
//! The spot oracle (`tests/fixtures/oracle-spot`) sees a palette colour anywhere in its input
//! (max-pooled), so a test knows exactly which crops can see a coloured patch.

use std::path::Path;

use sha2::Digest;

use crate::element::{
    MS, by_name, labels_file, matches, pipeline, pull_all, run_to_eos, start_error,
};
use crate::util::{self, floats, json, max_abs_diff};
use clipfilter::crops::{CropKind, CropPlan, CropSpec, Fit, Placement, may_use};
use clipfilter::engine::{Engine, EngineConfig, decode_image};
use clipfilter::labels::{LabelDefaults, LabelSet, Threshold};
use clipfilter::preprocess::{FrameRef, PixelBox, PixelFormat, Preprocessor, letterbox};
use gstclipfilter::clipfilter::messages::{MatchMessage, Message, ScoresMessage};

const GREY: [u8; 3] = [128, 128, 128];
const RED: [u8; 3] = [255, 0, 0];

fn spot() -> String {
    util::model("oracle-spot").display().to_string()
}

/// A grey RGB frame with red boxes.
fn frame(w: usize, h: usize, boxes: &[PixelBox]) -> Vec<u8> {
    let mut px: Vec<u8> = GREY.iter().copied().cycle().take(w * h * 3).collect();
    for b in boxes {
        for y in b.y as usize..b.bottom() as usize {
            for x in b.x as usize..b.right() as usize {
                px[(y * w + x) * 3..][..3].copy_from_slice(&RED);
            }
        }
    }
    px
}

/// An appsrc pipeline into clipfilter (`props`) into an appsink (`push_timed` sets the caps
/// and timestamps).
fn crop_pipeline(props: &str) -> crate::element::Pipe {
    pipeline(&format!(
        "appsrc name=src format=time caps=video/x-raw,format=RGB,width=8,height=8,framerate=25/1 \
         ! clipfilter name=cf {props} ! appsink name=sink sync=false wait-on-eos=false"
    ))
}

/// Pushes frame `i` of `frames` at `i * 40` ms.
fn push_timed(src: &gst_app::AppSrc, w: usize, h: usize, frames: &[Vec<u8>], first: u64) {
    src.set_caps(Some(
        &gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .field("width", w as i32)
            .field("height", h as i32)
            .field("framerate", gst::Fraction::new(25, 1))
            .build(),
    ));
    for (k, data) in frames.iter().enumerate() {
        let i = first + k as u64;
        let mut buf = gst::Buffer::from_mut_slice(data.clone());
        let b = buf.get_mut().expect("new buffer");
        b.set_pts(gst::ClockTime::from_nseconds(i * 40 * MS));
        b.set_duration(gst::ClockTime::from_nseconds(40 * MS));
        src.push_buffer(buf).expect("appsrc takes the buffer");
    }
}

fn match_messages(msgs: &[gst::Message]) -> Vec<MatchMessage> {
    msgs.iter()
        .filter_map(|m| match Message::parse(m) {
            Some(Ok(Message::Match(m))) => Some(m),
            _ => None,
        })
        .collect()
}

fn scores_messages(msgs: &[gst::Message]) -> Vec<ScoresMessage> {
    msgs.iter()
        .filter_map(|m| match Message::parse(m) {
            Some(Ok(Message::Scores(s))) => Some(s),
            _ => None,
        })
        .collect()
}

fn ms(m: &MatchMessage) -> u64 {
    m.position.stream_time.map_or(u64::MAX, |t| t.mseconds())
}

// ---------------------------------------------------------------------------------------------
// fit = pad against its reference

/// The formula image of `pad.json`: `t = (3x + 5y + 85c + (x*y)/16) % 512`, mirrored above 255.
fn pad_formula(w: usize, h: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let t = (3 * x + 5 * y + 85 * c + (x * y) / 16) % 512;
                v.push(if t < 256 { t } else { 511 - t } as u8);
            }
        }
    }
    v
}

#[test]
fn pad_matches_its_pil_reference() {
    let reference = json(&util::fixtures().join("reference/pad.json"));
    let engine_pre = clipfilter::model::ModelDir::open(
        util::model("oracle-spot"),
        clipfilter::model::Variant::Fp32,
    )
    .unwrap()
    .preprocess;
    let mut pre = Preprocessor::new(engine_pre.clone()).unwrap();
    let step = 1.0 / 255.0 / 0.2613;
    let (mut worst, mut sum, mut count) = (0f32, 0f64, 0usize);
    let images = reference["images"].as_array().unwrap();
    assert_eq!(images.len(), 4);
    for img in images {
        let (w, h) = (
            img["width"].as_u64().unwrap() as u32,
            img["height"].as_u64().unwrap() as u32,
        );
        let rgb = pad_formula(w as usize, h as usize);
        assert_eq!(
            hex(&sha2::Sha256::digest(&rgb)),
            img["image_sha256"].as_str().unwrap(),
            "{w}x{h}: the formula image differs from the generator's"
        );
        let lb = letterbox(w, h, 64, 64);
        assert_eq!(
            (lb.width, lb.height, lb.left, lb.top),
            (
                img["resized_width"].as_u64().unwrap() as u32,
                img["resized_height"].as_u64().unwrap() as u32,
                img["left"].as_u64().unwrap() as u32,
                img["top"].as_u64().unwrap() as u32
            ),
            "{w}x{h}: letterbox geometry"
        );
        let want: Vec<f32> = img["pixel_values"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c.as_array().unwrap().iter())
            .flat_map(floats)
            .collect();
        let frame = FrameRef::packed(PixelFormat::Rgb, w, h, &rgb).unwrap();
        let plan = CropPlan::new(&CropSpec::whole(Fit::Pad), &pre, w, h).unwrap();
        let mut ours = Vec::new();
        plan.preprocess(&mut pre, &frame, &[0], &mut ours).unwrap();
        assert_eq!(ours.len(), want.len());
        // Borders are exactly 0, as in the reference.
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            if *b == 0.0 {
                let (y, x) = ((i % 4096) / 64, i % 64);
                let inside = (lb.left..lb.left + lb.width).contains(&(x as u32))
                    && (lb.top..lb.top + lb.height).contains(&(y as u32));
                if !inside {
                    assert_eq!(*a, 0.0, "{w}x{h}: border pixel {i}");
                }
            }
        }
        let d = max_abs_diff(&ours, &want);
        worst = worst.max(d);
        sum += ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() as f64)
            .sum::<f64>();
        count += ours.len();
        eprintln!("pad {w}x{h}: max |Δ| = {d:.4} ({:.2} steps)", d / step);
    }
    let mean = sum / count as f64;
    eprintln!(
        "pad vs PIL: max |Δ| {:.2} steps, mean {:.3} steps",
        worst / step,
        mean / step as f64
    );
    // The preprocessing parity tolerances of the crop fit (lossless pictures): one 8-bit step
    // at most, a quarter of a step on average.
    assert!(worst <= 1.01 * step, "max pixel difference {worst}");
    assert!(mean < 0.25 * step as f64, "mean pixel difference {mean}");

    // On square pictures pad and the reference crop are the same thing, to the bit.
    for n in [64u32, 100, 37] {
        let rgb = pad_formula(n as usize, n as usize);
        let frame = FrameRef::packed(PixelFormat::Rgb, n, n, &rgb).unwrap();
        let mut a = vec![0.0; pre.output_len()];
        pre.run(&frame, &mut a).unwrap();
        let mut b = vec![0.0; pre.output_len()];
        pre.run_letterbox(&frame, PixelBox::new(0, 0, n, n), None, &mut b)
            .unwrap();
        assert_eq!(a, b, "{n}x{n}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// The whole picture: the outer fifth of a 16:9 (or 9:16) frame

/// 4 s of video, `w` x `h`: grey, then a red patch in the first outer fifth (left, or top for
/// portrait), grey, then one in the last outer fifth; one second each.
fn outer_fifth_video(w: usize, h: usize) -> Vec<Vec<u8>> {
    let landscape = w >= h;
    let (long, short) = if landscape { (w, h) } else { (h, w) };
    // 15% of the long side, inside its outer 20%; a third of the short side, centred.
    let (a0, len) = (long / 40, long * 15 / 100);
    let (b0, blen) = (short / 3, short / 3);
    let patch = |first: bool| {
        let start = if first { a0 } else { long - a0 - len };
        if landscape {
            PixelBox::new(start as u32, b0 as u32, len as u32, blen as u32)
        } else {
            PixelBox::new(b0 as u32, start as u32, blen as u32, len as u32)
        }
    };
    (0..100)
        .map(|i| match i / 25 {
            1 => frame(w, h, &[patch(true)]),
            3 => frame(w, h, &[patch(false)]),
            _ => frame(w, h, &[]),
        })
        .collect()
}

fn run_outer_fifth(fit: &str, w: usize, h: usize) -> Vec<MatchMessage> {
    let p = crop_pipeline(&format!(
        "model={} prompts=\"red;green;blue\" threshold-kind=cosine threshold=0.5 mode=sync interval={} fit={fit}",
        spot(),
        200 * MS
    ));
    let src: gst_app::AppSrc = by_name(&p, "src");
    push_timed(&src, w, h, &outer_fifth_video(w, h), 0);
    src.end_of_stream().unwrap();
    match_messages(&run_to_eos(&p))
}

#[test]
fn the_outer_fifth_is_seen_with_pad_and_crops_and_never_with_crop() {
    for (w, h, first, last) in [(320, 180, "left", "right"), (180, 320, "top", "bottom")] {
        let crop = run_outer_fifth("crop", w, h);
        assert!(
            crop.iter().all(|m| m.label != "red"),
            "{w}x{h} crop must never see the outer fifth: {crop:?}"
        );
        for fit in ["pad", "crops"] {
            let m = run_outer_fifth(fit, w, h);
            let red: Vec<(bool, u64, Option<String>, String)> = m
                .iter()
                .filter(|m| m.label == "red")
                .map(|m| {
                    (
                        m.transition == clipfilter::matcher::Transition::Start,
                        ms(m),
                        m.place.as_ref().map(|p| p.id.name.clone()),
                        m.reason.name().to_string(),
                    )
                })
                .collect();
            let times: Vec<(bool, u64)> = red.iter().map(|r| (r.0, r.1)).collect();
            assert_eq!(
                times,
                [(true, 1000), (false, 2000), (true, 3000), (false, 4000)],
                "{w}x{h} {fit}: {red:?}"
            );
            assert_eq!(red[3].3, "eos");
            let names: Vec<Option<String>> = red.iter().map(|r| r.2.clone()).collect();
            if fit == "crops" {
                // The start names the side; its end is decided by the same square.
                assert_eq!(
                    names,
                    [first, first, last, last].map(|s| Some(s.to_string())),
                    "{w}x{h}"
                );
            } else {
                assert!(
                    names.iter().all(|n| n.as_deref() == Some("frame")),
                    "{names:?}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tiles and regions: a small square in a corner, then in the opposite corner

const W: usize = 320;
const H: usize = 180;
/// About 8% of the frame's width.
const SIDE: u32 = 26;

fn corner(first: bool) -> PixelBox {
    if first {
        PixelBox::new(6, 6, SIDE, SIDE)
    } else {
        PixelBox::new(W as u32 - 6 - SIDE, H as u32 - 6 - SIDE, SIDE, SIDE)
    }
}

fn inside(outer: PixelBox, inner: PixelBox) -> bool {
    inner.x >= outer.x
        && inner.y >= outer.y
        && inner.right() <= outer.right()
        && inner.bottom() <= outer.bottom()
}

/// 2 s: the square in the first corner for the first second, then in the opposite one.
fn corner_video() -> Vec<Vec<u8>> {
    (0..50).map(|i| frame(W, H, &[corner(i < 25)])).collect()
}

#[test]
fn tiles_find_a_small_square_that_the_whole_frame_misses_and_follow_it() {
    // The whole frame as the reference sees it (fit=crop: its centre square) never shows the
    // corners; 3x3 tiles do.
    let run = |tiles: &str| {
        let p = crop_pipeline(&format!(
            "model={} prompts=\"red;green;blue\" threshold-kind=cosine threshold=0.5 mode=sync interval={} fit=crop tiles={tiles} post-scores=true",
            spot(),
            200 * MS
        ));
        let src: gst_app::AppSrc = by_name(&p, "src");
        push_timed(&src, W, H, &corner_video(), 0);
        src.end_of_stream().unwrap();
        run_to_eos(&p)
    };
    let whole = match_messages(&run("none"));
    assert!(whole.iter().all(|m| m.label != "red"), "{whole:?}");

    let msgs = run("3x3");
    let m = match_messages(&msgs);
    let red: Vec<&MatchMessage> = m.iter().filter(|m| m.label == "red").collect();
    assert_eq!(red.len(), 2, "one episode over both halves: {red:?}");
    let start = red[0].place.as_ref().expect("the start says where");
    assert_eq!(start.id.kind, CropKind::Tile);
    assert_eq!(start.id.name, "r1c1");
    assert!(inside(start.pixels, corner(true)), "{start:?}");
    assert_eq!(ms(red[0]), 0);

    // The scores follow the square from tile to tile, and the box always holds it.
    let scores = scores_messages(&msgs);
    assert_eq!(scores.len(), 10);
    for s in &scores {
        let t = s.position.stream_time.unwrap().mseconds();
        let i = s.labels.iter().position(|l| l == "red").unwrap();
        let place: &Placement = s.places[i].as_ref().unwrap();
        let (name, square) = if t < 1000 {
            ("r1c1", corner(true))
        } else {
            ("r3c3", corner(false))
        };
        assert_eq!(place.id.name, name, "at {t} ms: {place:?}");
        assert!(inside(place.pixels, square), "at {t} ms: {place:?}");
        assert!(s.scores[i] > 0.5, "at {t} ms: {}", s.scores[i]);
        // The relative box is the pixel box over the frame size.
        assert!((place.rect.x - f64::from(place.pixels.x) / W as f64).abs() < 1e-9);
        assert!((place.rect.w - f64::from(place.pixels.width) / W as f64).abs() < 1e-9);
        assert_eq!(s.inferred, 10);
    }
}

#[test]
fn a_label_limited_to_a_region_matches_only_there() {
    let dir = tempfile::tempdir().unwrap();
    let labels = labels_file(
        dir.path(),
        "[[region]]\nname = \"corner\"\nbox = [0.0, 0.0, 0.3, 0.4]\n\n\
         [[label]]\nname = \"red\"\nmin_cosine = 0.5\nregions = [\"corner\"]\n\n\
         [[label]]\nname = \"blue\"\nmin_cosine = 0.5\n",
    );
    let p = crop_pipeline(&format!(
        "model={} labels={} mode=sync interval={} fit=pad",
        spot(),
        labels.display(),
        200 * MS
    ));
    let src: gst_app::AppSrc = by_name(&p, "src");
    push_timed(&src, W, H, &corner_video(), 0);
    src.end_of_stream().unwrap();
    let m = match_messages(&run_to_eos(&p));
    let red: Vec<(bool, u64)> = m
        .iter()
        .filter(|m| m.label == "red")
        .map(|m| {
            (
                m.transition == clipfilter::matcher::Transition::Start,
                ms(m),
            )
        })
        .collect();
    // The whole frame (pad) sees the square in both corners, but red may only use the region.
    assert_eq!(red, [(true, 0), (false, 1000)], "{m:?}");
    let place = m[0].place.as_ref().unwrap();
    assert_eq!(
        (place.id.kind, place.id.name.as_str()),
        (CropKind::Region, "corner")
    );
    assert_eq!(place.pixels, PixelBox::new(0, 0, 96, 72));
}

#[test]
fn region_scope_pixelates_the_matched_tile_only_from_the_matched_frame() {
    let dir = tempfile::tempdir().unwrap();
    let labels = labels_file(
        dir.path(),
        "[[label]]\nname = \"red\"\nmin_cosine = 0.5\naction = \"pixelate\"\n\n\
         [[label]]\nname = \"blue\"\nmin_cosine = 0.5\n",
    );
    let p = crop_pipeline(&format!(
        "model={} labels={} mode=sync interval=0 fit=crop tiles=3x3 action-scope=region",
        spot(),
        labels.display()
    ));
    let src: gst_app::AppSrc = by_name(&p, "src");
    let sink: gst_app::AppSink = by_name(&p, "sink");
    // 5 grey frames, 15 with the square in the first corner, 10 with it in the opposite one.
    let input: Vec<Vec<u8>> = (0..30)
        .map(|i| match i {
            0..5 => frame(W, H, &[]),
            5..20 => frame(W, H, &[corner(true)]),
            _ => frame(W, H, &[corner(false)]),
        })
        .collect();
    push_timed(&src, W, H, &input, 0);
    src.end_of_stream().unwrap();
    let msgs = run_to_eos(&p);
    let out = pull_all(&sink);
    assert_eq!(out.len(), 30);
    let plan_tile = |name: &str| {
        let pre = Preprocessor::new(
            clipfilter::model::ModelDir::open(
                util::model("oracle-spot"),
                clipfilter::model::Variant::Fp32,
            )
            .unwrap()
            .preprocess,
        )
        .unwrap();
        let spec = CropSpec {
            tiles: clipfilter::crops::Tiles::new(3, 3, 0.1).ok(),
            ..CropSpec::whole(Fit::Crop)
        };
        let plan = CropPlan::new(&spec, &pre, W as u32, H as u32).unwrap();
        plan.crops
            .iter()
            .find(|c| c.id.name == name)
            .map(|c| c.pixels)
            .unwrap()
    };
    let (first, second) = (plan_tile("r1c1"), plan_tile("r3c3"));
    for (i, (sample, before)) in out.iter().zip(&input).enumerate() {
        let after = crate::element::pixels(sample);
        let painted = match i {
            0..5 => None,
            5..20 => Some(first),
            _ => Some(second),
        };
        let mut changed = 0;
        for y in 0..H {
            for x in 0..W {
                let k = (y * W + x) * 3;
                let inside = painted.is_some_and(|b| b.contains(x as u32, y as u32));
                if inside {
                    changed += usize::from(after[k..k + 3] != before[k..k + 3]);
                } else {
                    assert_eq!(
                        after[k..k + 3],
                        before[k..k + 3],
                        "frame {i}: pixel ({x},{y}) outside the matched tile changed"
                    );
                }
            }
        }
        if painted.is_some() {
            assert!(changed > 0, "frame {i}: the matched tile was not pixelated");
        }
    }
    let m = matches(&msgs);
    assert!(
        m[0].transition == clipfilter::matcher::Transition::Start && m[0].label == "red",
        "{m:?}"
    );
}

#[test]
fn regions_keep_their_place_across_a_resolution_change() {
    let p = crop_pipeline(&format!(
        "model={} prompts=\"red;blue\" threshold-kind=cosine threshold=0.5 mode=sync interval={} fit=crop regions=corner:0,0,0.3,0.4 post-scores=true",
        spot(),
        200 * MS
    ));
    let src: gst_app::AppSrc = by_name(&p, "src");
    // 1 s at 320x180, 1 s at 640x360, the square in the same relative place.
    let small: Vec<Vec<u8>> = (0..25).map(|_| frame(W, H, &[corner(true)])).collect();
    let big_square = PixelBox::new(12, 12, 2 * SIDE, 2 * SIDE);
    let big: Vec<Vec<u8>> = (0..25)
        .map(|_| frame(2 * W, 2 * H, &[big_square]))
        .collect();
    push_timed(&src, W, H, &small, 0);
    push_timed(&src, 2 * W, 2 * H, &big, 25);
    src.end_of_stream().unwrap();
    let msgs = run_to_eos(&p);
    let m = match_messages(&msgs);
    let red: Vec<&MatchMessage> = m.iter().filter(|m| m.label == "red").collect();
    assert_eq!(red.len(), 2, "one episode across the change: {red:?}");
    let scores = scores_messages(&msgs);
    assert_eq!(scores.len(), 10);
    for s in &scores {
        let t = s.position.stream_time.unwrap().mseconds();
        let place = s.places[0].as_ref().unwrap();
        assert_eq!(place.id.name, "corner");
        let want = if t < 1000 {
            PixelBox::new(0, 0, 96, 72)
        } else {
            PixelBox::new(0, 0, 192, 144)
        };
        assert_eq!(place.pixels, want, "at {t} ms");
        assert!((place.rect.w - 0.3).abs() < 1e-9 && (place.rect.h - 0.4).abs() < 1e-9);
        assert!(s.scores[0] > 0.5, "at {t} ms");
    }
}

#[test]
fn bad_regions_and_tiles_fail_the_start_naming_the_problem() {
    let src = "videotestsrc num-buffers=1 ! video/x-raw,width=32,height=24";
    let start = |props: &str| {
        start_error(&format!(
            "{src} ! clipfilter model={} prompts=\"red;green\" {props} ! fakesink",
            spot()
        ))
    };
    let e = start("regions=gate:0.7,0.4,0.5,0.35");
    assert!(
        e.contains("regions") && e.contains("gate") && e.contains("outside the frame"),
        "{e}"
    );
    // A bowtie: its edges 1 and 3 cross (an asymmetric one, so that its area is not 0).
    let e = start("regions=\"door:polygon:0.1,0.1,0.6,0.5,0.1,0.5,0.5,0.1\"");
    assert!(e.contains("crosses itself") && e.contains("edge 1"), "{e}");
    let e = start("regions=\"door:polygon:0.1,0.1,0.2,0.2,0.3,0.3\"");
    assert!(e.contains("empty"), "{e}");
    let e = start("tiles=0x3");
    assert!(e.contains("tiles") && e.contains("between 1 and 8"), "{e}");
    let e = start("tiles=9x9");
    assert!(e.contains("tiles") && e.contains("9 columns"), "{e}");
    let e = start("whole-frame=false");
    assert!(e.contains("nothing to look at"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let unknown = labels_file(
        dir.path(),
        "[[label]]\nname = \"red\"\nmin_cosine = 0.5\nregions = [\"gate\"]\n",
    );
    let e = start_error(&format!(
        "{src} ! clipfilter model={} labels={} ! fakesink",
        spot(),
        unknown.display()
    ));
    assert!(
        e.contains("labels.toml")
            && e.contains("line 4")
            && e.contains("label[0].regions")
            && e.contains("unknown region `gate`"),
        "{e}"
    );
    // The element's regions count for the label set's labels.
    let p = pipeline(&format!(
        "{src} ! clipfilter model={} labels={} regions=gate:0,0,0.5,0.5 ! fakesink",
        spot(),
        unknown.display()
    ));
    run_to_eos(&p);
}

// ---------------------------------------------------------------------------------------------
// Best over crops, or the mean: measured on the trained digits model

/// Two 40x40 example pictures side by side: an 80x40 frame.
fn side_by_side(a: &Path, b: &Path) -> Vec<u8> {
    let (a, b) = (decode_image(a).unwrap(), decode_image(b).unwrap());
    let mut out = Vec::with_capacity(80 * 40 * 3);
    for y in 0..40 {
        out.extend_from_slice(&a.as_raw()[y * 120..(y + 1) * 120]);
        out.extend_from_slice(&b.as_raw()[y * 120..(y + 1) * 120]);
    }
    out
}

fn pictures(folder: &str) -> Vec<std::path::PathBuf> {
    let dir = util::model("digits").join("examples/heldout").join(folder);
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn best_over_crops_finds_what_the_mean_and_a_single_view_miss() {
    // Frames of two digit pictures side by side (2:1). Positives: a "three" beside a picture
    // without a three; negatives: two pictures without one. "three" as labels.toml sets it
    // (probability >= 0.5 over the 11 labels). Compared: the crops fit with the best square
    // (what clipfilter does) or the mean of the squares' probabilities, pad (the whole frame,
    // letterboxed) and the centre crop.
    let engine = Engine::load(&EngineConfig::new(util::model("digits"))).unwrap();
    let set = LabelSet::from_file(&util::model("digits").join("labels.toml")).unwrap();
    let labels = engine
        .compile_labels(&set, &LabelDefaults::default())
        .unwrap();
    let three = labels.index_of("three").unwrap();
    let Threshold::Probability(t) = labels.labels[three].threshold else {
        panic!("three uses a probability threshold");
    };
    let (threes, nones, sevens, eights) = (
        pictures("three"),
        pictures("none"),
        pictures("seven"),
        pictures("eight"),
    );
    let n = threes.len();
    let mut frames: Vec<(bool, Vec<u8>)> = Vec::new();
    for i in 0..n {
        let other = &nones[i];
        frames.push((
            true,
            if i % 2 == 0 {
                side_by_side(&threes[i], other)
            } else {
                side_by_side(other, &threes[i])
            },
        ));
        frames.push((false, side_by_side(&nones[i], &sevens[i])));
        frames.push((false, side_by_side(&eights[i], &nones[(i + 1) % n])));
        frames.push((false, side_by_side(&sevens[i], &eights[(i + 2) % n])));
    }
    let mut pre = engine.preprocessor().unwrap();
    // [max over crops, mean over crops, pad, crop]: (true positives, false positives)
    let mut counts = [(0usize, 0usize); 4];
    let mut scores = clipfilter::crops::CropScores::default();
    for (positive, rgb) in &frames {
        let frame = FrameRef::packed(PixelFormat::Rgb, 80, 40, rgb).unwrap();
        let mut prob = [0f32; 4];
        for (k, fit) in [Fit::Crops, Fit::Pad, Fit::Crop].into_iter().enumerate() {
            let plan = CropPlan::new(&CropSpec::whole(fit), &pre, 80, 40).unwrap();
            let all: Vec<usize> = (0..plan.len()).collect();
            let mut px = Vec::new();
            plan.preprocess(&mut pre, &frame, &all, &mut px).unwrap();
            let e = engine.embed_pixels(&px).unwrap().concat();
            clipfilter::crops::score_crops(&labels, &plan.crops, &e, &mut scores).unwrap();
            if fit == Fit::Crops {
                assert_eq!(plan.len(), 2);
                assert!(
                    plan.crops
                        .iter()
                        .all(|c| may_use(&labels.labels[three], &c.id))
                );
                prob[0] = scores.scores.probability[three];
                prob[1] = scores
                    .per_crop
                    .iter()
                    .map(|s| s.probability[three])
                    .sum::<f32>()
                    / plan.len() as f32;
            } else {
                prob[k + 1] = scores.scores.probability[three];
            }
        }
        for (c, p) in counts.iter_mut().zip(prob) {
            if p >= t {
                if *positive {
                    c.0 += 1;
                } else {
                    c.1 += 1;
                }
            }
        }
    }
    let (pos, neg) = (n, frames.len() - n);
    eprintln!(
        "\"three\" (probability >= {t}) on {pos} frames with a three beside another picture, {neg} without:"
    );
    for (name, (tp, fp)) in ["crops, best", "crops, mean", "pad", "crop"]
        .iter()
        .zip(counts)
    {
        eprintln!(
            "  {name:<12} detected {tp:>2}/{pos} ({:>3.0}%), false alarms {fp:>2}/{neg} ({:>4.1}%)",
            100.0 * tp as f64 / pos as f64,
            100.0 * fp as f64 / neg as f64
        );
    }
    let [best, mean, pad, crop] = counts;
    // The best square finds the threes that the mean of the squares hides and that the centre
    // crop cuts off...
    assert!(best.0 > mean.0, "best {best:?} vs mean {mean:?}");
    assert!(best.0 > crop.0, "best {best:?} vs crop {crop:?}");
    // ... as many as the letterboxed frame, with fewer false alarms (each square shows its
    // picture larger), at twice the inferences.
    assert!(
        best.0 >= pad.0 && best.1 <= pad.1,
        "best {best:?} vs pad {pad:?}"
    );
    assert!(best.1 * 10 <= neg, "best false alarms {best:?} of {neg}");
}
