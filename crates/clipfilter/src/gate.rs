//! The scene-change gate: skip inference for a sampled frame that is nearly the same as the last
//! frame that was inferred.
//!
//! Each frame is reduced to a tiny thumbnail (a grid of cells, each the mean of a small patch of
//! luma or RGB samples, about ten thousand byte reads for a 1080p frame) and compared with the
//! thumbnail of the last inferred frame: the mean absolute difference over the cells, in 8-bit
//! levels. A static camera is inferred once and then again only when something moves, or when
//! `max_skip` has passed (lighting drifts slowly; the verdict should not go stale forever).
//!
//! A stream whose frames are scored in several crops (tiles, regions) keeps one gate per crop,
//! each looking at its own box ([`SceneGate::check_area`]): an unchanged tile is not inferred
//! again while another one changes.

use std::time::Duration;

use crate::preprocess::{FrameRef, PixelBox, PixelFormat};

/// Thumbnail grid: columns x rows.
const GRID_W: usize = 32;
const GRID_H: usize = 18;
/// Samples per cell side.
const PATCH: usize = 4;

/// Gate settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateConfig {
    /// Mean absolute difference (8-bit levels) at or above which a frame counts as changed.
    /// 0 disables the gate.
    pub threshold: f32,
    /// Infer at least this often even when nothing changes.
    pub max_skip: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            threshold: 3.0,
            max_skip: Duration::from_secs(60),
        }
    }
}

/// Per-stream gate state.
#[derive(Debug, Clone)]
pub struct SceneGate {
    config: GateConfig,
    last: Option<Vec<u8>>,
    /// Stream time of the last inferred frame.
    last_time: Option<Duration>,
    current: Vec<u8>,
    skipped: u64,
}

/// What the gate decided for a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Infer it (changed, first frame, gate off, or `max_skip` reached). Carries the difference
    /// to the last inferred frame when there was one.
    Infer(Option<f32>),
    /// Skip it: the scene has not changed (the difference is given).
    Skip(f32),
}

impl SceneGate {
    pub fn new(config: GateConfig) -> Self {
        SceneGate {
            config,
            last: None,
            last_time: None,
            current: Vec::with_capacity(GRID_W * GRID_H * 3),
            skipped: 0,
        }
    }

    /// Changes the settings, keeping the reference frame.
    pub fn set_config(&mut self, config: GateConfig) {
        self.config = config;
    }

    /// Frames skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Forgets the reference frame (after a flush, seek or caps change).
    pub fn reset(&mut self) {
        self.last = None;
        self.last_time = None;
    }

    /// Decides for `frame` at stream time `time`. A frame judged `Infer` becomes the new
    /// reference.
    pub fn check(&mut self, frame: &FrameRef<'_>, time: Duration) -> Verdict {
        self.check_area(frame, PixelBox::new(0, 0, frame.width, frame.height), time)
    }

    /// Decides for the box `area` of `frame` (a crop) at stream time `time`; the thumbnail
    /// covers the box only. `area` is clamped to the frame.
    pub fn check_area(&mut self, frame: &FrameRef<'_>, area: PixelBox, time: Duration) -> Verdict {
        if self.config.threshold <= 0.0 {
            return Verdict::Infer(None);
        }
        thumbnail(frame, area, &mut self.current);
        let diff = match &self.last {
            Some(last) if last.len() == self.current.len() => {
                Some(mean_abs_diff(last, &self.current))
            }
            _ => None,
        };
        let stale = self
            .last_time
            .is_none_or(|t| time.saturating_sub(t) >= self.config.max_skip || time < t);
        match diff {
            Some(d) if d < self.config.threshold && !stale => {
                self.skipped += 1;
                Verdict::Skip(d)
            }
            _ => {
                std::mem::swap(&mut self.current, self.last.get_or_insert_with(Vec::new));
                self.last_time = Some(time);
                Verdict::Infer(diff)
            }
        }
    }
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f32 {
    let sum: u32 = a
        .iter()
        .zip(b)
        .map(|(x, y)| u32::from(x.abs_diff(*y)))
        .sum();
    sum as f32 / a.len().max(1) as f32
}

/// Fills `out` with the grid of patch means over `area`: luma for YUV and gray frames, R, G, B
/// otherwise.
fn thumbnail(frame: &FrameRef<'_>, area: PixelBox, out: &mut Vec<u8>) {
    out.clear();
    let (fw, fh) = (frame.width as usize, frame.height as usize);
    let (ax, ay) = ((area.x as usize).min(fw), (area.y as usize).min(fh));
    let (w, h) = (
        (area.width as usize).min(fw - ax),
        (area.height as usize).min(fh - ay),
    );
    let offsets;
    let (bpp, channels): (usize, &[usize]) = match frame.format {
        PixelFormat::I420
        | PixelFormat::Yv12
        | PixelFormat::Nv12
        | PixelFormat::Nv21
        | PixelFormat::Gray8 => (1, &[0]),
        f => {
            offsets = f.rgb_offsets();
            (f.packed_bytes().unwrap_or(3), &offsets)
        }
    };
    let plane = frame.planes[0];
    let stride = frame.strides[0];
    for gy in 0..GRID_H {
        for gx in 0..GRID_W {
            // Patch centred in the cell, clamped to the frame.
            let cx = (2 * gx + 1) * w / (2 * GRID_W);
            let cy = (2 * gy + 1) * h / (2 * GRID_H);
            let x0 = ax + cx.saturating_sub(PATCH / 2).min(w.saturating_sub(PATCH));
            let y0 = ay + cy.saturating_sub(PATCH / 2).min(h.saturating_sub(PATCH));
            for &c in channels {
                let mut sum = 0u32;
                let mut n = 0u32;
                for y in y0..(y0 + PATCH).min(ay + h) {
                    let row = &plane[y * stride..];
                    for x in x0..(x0 + PATCH).min(ax + w) {
                        sum += u32::from(row[x * bpp + c]);
                        n += 1;
                    }
                }
                out.push((sum / n.max(1)) as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(w: u32, h: u32, v: u8) -> Vec<u8> {
        vec![v; (w * h) as usize]
    }

    #[test]
    fn static_scene_is_inferred_once_and_a_change_again() {
        let mut gate = SceneGate::new(GateConfig::default());
        let a = gray(640, 360, 100);
        let mut b = a.clone();
        // Something appears in the middle quarter of the picture.
        for y in 90..270 {
            for x in 160..480 {
                b[y * 640 + x] = 200;
            }
        }
        let fa = FrameRef::packed(PixelFormat::Gray8, 640, 360, &a).unwrap();
        let fb = FrameRef::packed(PixelFormat::Gray8, 640, 360, &b).unwrap();
        let s = Duration::from_secs;
        assert_eq!(gate.check(&fa, s(0)), Verdict::Infer(None));
        for t in 1..10 {
            assert!(matches!(gate.check(&fa, s(t)), Verdict::Skip(d) if d == 0.0));
        }
        assert!(matches!(gate.check(&fb, s(10)), Verdict::Infer(Some(d)) if d > 8.0));
        assert!(matches!(gate.check(&fb, s(11)), Verdict::Skip(_)));
        assert_eq!(gate.skipped(), 10);
        // Nothing changes for max_skip: inferred again anyway.
        assert!(matches!(gate.check(&fb, s(71)), Verdict::Infer(Some(_))));
        gate.reset();
        assert_eq!(gate.check(&fb, s(72)), Verdict::Infer(None));
    }

    #[test]
    fn a_gate_per_crop_sees_only_its_box() {
        let (w, h) = (640u32, 360u32);
        let a = gray(w, h, 100);
        let mut b = a.clone();
        // Something moves in the right half only.
        for y in 100..200 {
            for x in 400..560 {
                b[y * 640 + x] = 220;
            }
        }
        let fa = FrameRef::packed(PixelFormat::Gray8, w, h, &a).unwrap();
        let fb = FrameRef::packed(PixelFormat::Gray8, w, h, &b).unwrap();
        let left = PixelBox::new(0, 0, 320, 360);
        let right = PixelBox::new(320, 0, 320, 360);
        let mut gl = SceneGate::new(GateConfig::default());
        let mut gr = SceneGate::new(GateConfig::default());
        let s = Duration::from_secs;
        assert!(matches!(
            gl.check_area(&fa, left, s(0)),
            Verdict::Infer(None)
        ));
        assert!(matches!(
            gr.check_area(&fa, right, s(0)),
            Verdict::Infer(None)
        ));
        assert!(matches!(gl.check_area(&fb, left, s(1)), Verdict::Skip(d) if d == 0.0));
        assert!(matches!(gr.check_area(&fb, right, s(1)), Verdict::Infer(Some(d)) if d > 8.0));
        // A box reaching past the frame is clamped, not a panic.
        let mut gx = SceneGate::new(GateConfig::default());
        assert!(matches!(
            gx.check_area(&fa, PixelBox::new(600, 300, 100, 100), s(0)),
            Verdict::Infer(None)
        ));
    }

    #[test]
    fn small_noise_does_not_count_as_change() {
        let mut gate = SceneGate::new(GateConfig::default());
        let mut rng = fastrand::Rng::with_seed(1);
        let base: Vec<u8> = (0..320 * 240 * 3).map(|_| rng.u8(90..110)).collect();
        let noisy: Vec<u8> = base
            .iter()
            .map(|v| v.saturating_add(rng.u8(0..3)))
            .collect();
        let f1 = FrameRef::packed(PixelFormat::Rgb, 320, 240, &base).unwrap();
        let f2 = FrameRef::packed(PixelFormat::Rgb, 320, 240, &noisy).unwrap();
        assert!(matches!(gate.check(&f1, Duration::ZERO), Verdict::Infer(_)));
        assert!(matches!(gate.check(&f2, Duration::from_secs(1)), Verdict::Skip(d) if d < 3.0));
        let mut off = SceneGate::new(GateConfig {
            threshold: 0.0,
            ..GateConfig::default()
        });
        assert_eq!(off.check(&f1, Duration::ZERO), Verdict::Infer(None));
        assert_eq!(off.check(&f1, Duration::ZERO), Verdict::Infer(None));
    }
}
