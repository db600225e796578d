//! What the benchmark sections share: the bare image-tower session at one batch size, images/s
//! measured in rounds, and the thread count of the sessions.

use std::time::Instant;

use anyhow::Context;

use super::ModelArgs;
use clipfilter::encoder::ImageEncoder;
use clipfilter::engine::EngineConfig;
use clipfilter::model::{ModelDir, Variant};
use clipfilter::preprocess::{FrameRef, PixelFormat, YuvColor};
use clipfilter::worker::BatchConfig;

/// Threads per session: `--threads`, else one per core.
pub(crate) fn threads(args: &ModelArgs) -> usize {
    if args.threads > 0 {
        args.threads
    } else {
        std::thread::available_parallelism().map_or(2, usize::from)
    }
}

/// Images counted over seconds measured; rounds of several measurements add up.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Rate {
    pub(crate) images: usize,
    pub(crate) seconds: f64,
}

impl Rate {
    pub(crate) fn add(&mut self, other: Rate) {
        self.images += other.images;
        self.seconds += other.seconds;
    }

    pub(crate) fn per_s(self) -> f64 {
        self.images as f64 / self.seconds
    }
}

/// Rounds per figure: the measurements being compared take turns, so drift in the machine's
/// load hits all of them alike instead of whichever happened to run last.
pub(crate) const ROUNDS: usize = 3;

/// The bare image-tower session at one batch size, with a random input.
pub(crate) struct SessionBench {
    enc: ImageEncoder,
    input: Vec<f32>,
    out: Vec<f32>,
    batch: usize,
}

impl SessionBench {
    pub(crate) fn load(model: &ModelDir, args: &ModelArgs, batch: usize) -> anyhow::Result<Self> {
        let size = model
            .preprocess
            .output_size()
            .context("model has no fixed input size")?;
        let mut cfg = args.engine_config().session;
        cfg.intra_threads = threads(args);
        let mut enc = ImageEncoder::load(&model.vision_onnx, size, &cfg)?;
        let mut rng = fastrand::Rng::with_seed(7);
        let input: Vec<f32> = (0..batch * enc.image_len())
            .map(|_| rng.f32() * 4.0 - 2.0)
            .collect();
        let mut out = Vec::new();
        for _ in 0..2 {
            enc.encode(&input, batch, &mut out)?;
        }
        Ok(Self {
            enc,
            input,
            out,
            batch,
        })
    }

    /// Runs for at least `seconds` (and at least three batches).
    pub(crate) fn measure(&mut self, seconds: f64) -> anyhow::Result<Rate> {
        let start = Instant::now();
        let mut runs = 0;
        while runs < 3 || start.elapsed().as_secs_f64() < seconds {
            self.enc.encode(&self.input, self.batch, &mut self.out)?;
            runs += 1;
        }
        Ok(Rate {
            images: runs * self.batch,
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// A synthetic 1080p frame in `format` (a gradient with some texture, so resampling does work).
pub(crate) fn frame_1080p(format: PixelFormat) -> (Vec<u8>, [usize; 3], [usize; 3]) {
    let (w, h) = (1920usize, 1080usize);
    let px = |x: usize, y: usize, c: usize| ((x * (c + 1) + y * 3 + (x ^ y) % 17) % 256) as u8;
    match format {
        PixelFormat::Nv12 => {
            let mut d = vec![0u8; w * h * 3 / 2];
            for y in 0..h {
                for x in 0..w {
                    d[y * w + x] = px(x, y, 0);
                }
            }
            for (i, v) in d[w * h..].iter_mut().enumerate() {
                *v = 64 + (i % 128) as u8;
            }
            (d, [0, w * h, 0], [w, w, 0])
        }
        PixelFormat::I420 => {
            let mut d = vec![0u8; w * h * 3 / 2];
            for (i, v) in d.iter_mut().enumerate() {
                *v = px(i % w, i / w, 1);
            }
            (d, [0, w * h, w * h + w * h / 4], [w, w / 2, w / 2])
        }
        f => {
            let bpp = f.packed_bytes().unwrap_or(3);
            let mut d = vec![0u8; w * h * bpp];
            for (i, v) in d.iter_mut().enumerate() {
                *v = px((i / bpp) % w, i / bpp / w, i % bpp);
            }
            (d, [0, 0, 0], [w * bpp, 0, 0])
        }
    }
}

pub(crate) fn frame_ref<'a>(
    format: PixelFormat,
    data: &'a [u8],
    offsets: [usize; 3],
    strides: [usize; 3],
) -> FrameRef<'a> {
    let n = format.planes();
    let plane = |i: usize| -> &'a [u8] {
        if i < n {
            let end = if i + 1 < n {
                offsets[i + 1]
            } else {
                data.len()
            };
            &data[offsets[i]..end]
        } else {
            &[]
        }
    };
    FrameRef {
        format,
        width: 1920,
        height: 1080,
        planes: [plane(0), plane(1), plane(2)],
        strides,
        color: YuvColor::default(),
    }
}

pub(crate) fn engine_config(args: &ModelArgs, max_batch: usize, variant: Variant) -> EngineConfig {
    let mut cfg = args.engine_config();
    cfg.variant = variant;
    cfg.session.intra_threads = threads(args);
    cfg.batch = BatchConfig {
        max_batch,
        ..cfg.batch
    };
    cfg
}
