//! The image tower on a Triton server: batches from the worker as one `pixel_values` tensor in
//! the configured wire format (float32, float16, or the 8-bit RGB values for a model that
//! normalises them itself), embeddings back as float32.

use std::sync::atomic::Ordering;

use clipfilter_triton::{Tensor, WireFormat};

use super::{LocalInterface, Remote};
use crate::encoder::{ImageEncoder, Provider};
use crate::error::{Error, Result};
use crate::preprocess::{PreprocessConfig, value_table};
use crate::tower::ImageTower;

/// The local fallback: the folder's own tower, and for the uint8 wire format the table that
/// normalises the 8-bit values the worker holds.
struct Fallback {
    encoder: ImageEncoder,
    table: Option<[[f32; 256]; 3]>,
    normalised: Vec<f32>,
    /// Whether the last batch ran here (to log the switch once).
    active: bool,
}

/// The image tower of a [`Remote`].
pub struct RemoteImage {
    remote: Remote,
    input: String,
    output: String,
    size: (u32, u32),
    dim: usize,
    bytes: Vec<u8>,
    fallback: Option<Fallback>,
}

impl RemoteImage {
    pub(super) fn new(
        remote: Remote,
        io: &LocalInterface,
        fallback: Option<(ImageEncoder, PreprocessConfig)>,
    ) -> Self {
        let wire = remote.config.wire;
        RemoteImage {
            input: io.image_input.clone(),
            output: io.image_output.clone(),
            size: io.size,
            dim: io.dim,
            bytes: Vec::new(),
            fallback: fallback.map(|(encoder, cfg)| Fallback {
                encoder,
                table: (wire == WireFormat::Uint8).then(|| value_table(&cfg)),
                normalised: Vec::new(),
                active: false,
            }),
            remote,
        }
    }

    fn tensor(&mut self, pixels: &[f32], batch: usize) -> Result<Tensor> {
        let (h, w) = (self.size.0 as usize, self.size.1 as usize);
        let shape = vec![batch, 3, h, w];
        match self.remote.config.wire {
            WireFormat::Fp32 => Tensor::from_f32(&self.input, shape, pixels),
            WireFormat::Fp16 => Tensor::f16_from_f32(&self.input, shape, pixels),
            WireFormat::Uint8 => {
                // The preprocessor left the values unnormalised: whole numbers 0..=255.
                self.bytes.clear();
                self.bytes
                    .extend(pixels.iter().map(|v| v.clamp(0.0, 255.0) as u8));
                Tensor::from_u8(&self.input, shape, std::mem::take(&mut self.bytes))
            }
        }
        .map_err(|e| Error::remote("image batch", e))
    }

    fn infer(&mut self, pixels: &[f32], batch: usize, out: &mut Vec<f32>) -> Result<()> {
        let model = self.remote.config.image_model.clone();
        let tensor = self.tensor(pixels, batch)?;
        let outputs = self
            .remote
            .pool
            .infer(&model, vec![tensor])
            .map_err(|e| Error::remote(format!("Triton model '{model}'"), e))?;
        let embeds = outputs
            .iter()
            .find(|t| t.name() == self.output)
            .or(outputs.first())
            .ok_or_else(|| Error::Worker {
                message: format!("Triton model '{model}' returned no output"),
            })?;
        let values = embeds
            .to_f32()
            .map_err(|e| Error::remote(format!("Triton model '{model}'"), e))?;
        if values.len() != batch * self.dim {
            return Err(Error::Worker {
                message: format!(
                    "Triton model '{model}' returned {} values for {batch} images of width {}",
                    values.len(),
                    self.dim
                ),
            });
        }
        out.clear();
        out.extend_from_slice(&values);
        Ok(())
    }

    fn run_fallback(
        fallback: &mut Fallback,
        pixels: &[f32],
        batch: usize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let input = match &fallback.table {
            None => pixels,
            Some(table) => {
                let plane = pixels.len() / (3 * batch.max(1));
                fallback.normalised.clear();
                fallback
                    .normalised
                    .extend(pixels.iter().enumerate().map(|(i, v)| {
                        let channel = (i / plane.max(1)) % 3;
                        table[channel][v.clamp(0.0, 255.0) as usize]
                    }));
                &fallback.normalised
            }
        };
        fallback.encoder.encode(input, batch, out)
    }
}

impl ImageTower for RemoteImage {
    fn image_len(&self) -> usize {
        3 * self.size.0 as usize * self.size.1 as usize
    }

    fn encode(&mut self, pixels: &[f32], batch: usize, out: &mut Vec<f32>) -> Result<()> {
        if batch == 0 {
            out.clear();
            return Ok(());
        }
        crate::tower::check_batch(pixels, batch, self.image_len())?;
        let _span =
            tracing::debug_span!("remote_image_encode", batch, wire = %self.remote.config.wire)
                .entered();
        let result = self.infer(pixels, batch, out);
        let Some(fallback) = self.fallback.as_mut() else {
            return result;
        };
        match result {
            Err(e) if e.is_unavailable() => {
                if !fallback.active {
                    tracing::error!(error = %e, "no Triton endpoint is ready: running the image tower locally (fallback = \"local\")");
                    fallback.active = true;
                    self.remote
                        .stats
                        .fallback_active
                        .store(true, Ordering::Relaxed);
                }
                self.remote
                    .stats
                    .fallback_batches
                    .fetch_add(1, Ordering::Relaxed);
                Self::run_fallback(fallback, pixels, batch, out)
            }
            other => {
                if fallback.active && other.is_ok() {
                    tracing::info!(
                        "a Triton endpoint is back: the image tower runs remotely again"
                    );
                    fallback.active = false;
                    self.remote
                        .stats
                        .fallback_active
                        .store(false, Ordering::Relaxed);
                }
                other
            }
        }
    }

    fn provider(&self) -> Provider {
        Provider::Triton
    }
}
