//! What the benchmark sections share: the bare image-tower session at one batch size, images/s
//! measured in rounds, and the thread count of the sessions.

use std::time::Instant;

use anyhow::Context;

use super::ModelArgs;
use clipfilter::encoder::ImageEncoder;
use clipfilter::model::ModelDir;

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
