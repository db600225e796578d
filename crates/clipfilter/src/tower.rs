//! What runs a CLIP tower, wherever it runs: an ONNX Runtime session on this machine
//! ([`crate::encoder`]) or a model on a Triton Inference Server ([`crate::remote`]). The
//! inference worker and the text encoder hold them behind these traits, so that the batching,
//! the fairness, the prompt cache and everything above them are the same for both.

use crate::encoder::Provider;
use crate::error::{Error, Result};

/// Runs the image tower on batches of preprocessed images.
pub trait ImageTower: Send {
    /// Floats per image in the input (`3 * H * W`).
    fn image_len(&self) -> usize;

    /// Runs `batch` images (`batch * image_len()` floats) and writes `batch * D` raw (not
    /// normalised) embeddings into `out`.
    fn encode(&mut self, pixels: &[f32], batch: usize, out: &mut Vec<f32>) -> Result<()>;

    /// What runs it (reported in stats, `/status` and metrics).
    fn provider(&self) -> Provider;
}

/// Runs the text tower on padded token ids.
pub trait TextTower: Send {
    /// Runs `n` rows of `len` token ids (`ids` and `mask` hold `n * len` values; `mask` is 1
    /// where a token is, 0 on padding) and returns one raw embedding per row.
    fn run(&mut self, ids: Vec<i64>, mask: Vec<i64>, n: usize, len: usize)
    -> Result<Vec<Vec<f32>>>;

    /// The sequence length the model fixes, if it does.
    fn fixed_len(&self) -> Option<usize>;

    /// What runs it.
    fn provider(&self) -> Provider;
}

/// Checks that `pixels` holds exactly `batch` images of `image_len` floats: what every
/// [`ImageTower::encode`] requires before it runs anything.
pub fn check_batch(pixels: &[f32], batch: usize, image_len: usize) -> Result<()> {
    if pixels.len() != batch * image_len {
        return Err(Error::invalid(
            "image batch",
            format!("{} floats for {batch} images of {image_len}", pixels.len()),
        ));
    }
    Ok(())
}
