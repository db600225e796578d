//! The text tower on a Triton server: padded token ids (and the attention mask when the model
//! takes one) as INT64, embeddings back as float32.

use std::sync::atomic::Ordering;

use clipfilter_triton::Tensor;

use super::{LocalInterface, Remote};
use crate::encoder::{LocalText, Provider};
use crate::error::{Error, Result};
use crate::tower::TextTower;

/// The text tower of a [`Remote`].
pub struct RemoteText {
    remote: Remote,
    attention_mask: bool,
    output: String,
    seq_len: Option<usize>,
    dim: usize,
    fallback: Option<LocalText>,
}

impl RemoteText {
    pub(super) fn new(remote: Remote, io: &LocalInterface, fallback: Option<LocalText>) -> Self {
        RemoteText {
            remote,
            attention_mask: io.attention_mask,
            output: io.text_output.clone(),
            seq_len: io.seq_len,
            dim: io.dim,
            fallback,
        }
    }

    fn infer(&self, ids: &[i64], mask: &[i64], n: usize, len: usize) -> Result<Vec<Vec<f32>>> {
        let model = &self.remote.config.text_model;
        let context = || format!("Triton model '{model}'");
        let mut inputs = vec![
            Tensor::from_i64("input_ids", vec![n, len], ids)
                .map_err(|e| Error::remote(context(), e))?,
        ];
        if self.attention_mask {
            inputs.push(
                Tensor::from_i64("attention_mask", vec![n, len], mask)
                    .map_err(|e| Error::remote(context(), e))?,
            );
        }
        let outputs = self
            .remote
            .pool
            .infer(model, inputs)
            .map_err(|e| Error::remote(context(), e))?;
        let embeds = outputs
            .iter()
            .find(|t| t.name() == self.output)
            .or(outputs.first())
            .ok_or_else(|| Error::Worker {
                message: format!("{}: no output", context()),
            })?;
        let values = embeds.to_f32().map_err(|e| Error::remote(context(), e))?;
        if values.len() != n * self.dim {
            return Err(Error::Worker {
                message: format!(
                    "{}: {} values for {n} texts of width {}",
                    context(),
                    values.len(),
                    self.dim
                ),
            });
        }
        Ok(values.chunks_exact(self.dim).map(<[f32]>::to_vec).collect())
    }
}

impl TextTower for RemoteText {
    fn run(
        &mut self,
        ids: Vec<i64>,
        mask: Vec<i64>,
        n: usize,
        len: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let _span = tracing::debug_span!("remote_text_encode", batch = n).entered();
        match (self.infer(&ids, &mask, n, len), self.fallback.as_mut()) {
            (Err(e), Some(local)) if e.is_unavailable() => {
                tracing::error!(error = %e, "no Triton endpoint is ready: running the text tower locally (fallback = \"local\")");
                self.remote
                    .stats
                    .fallback_texts
                    .fetch_add(n as u64, Ordering::Relaxed);
                local.run(ids, mask, n, len)
            }
            (result, _) => result,
        }
    }

    fn fixed_len(&self) -> Option<usize> {
        self.seq_len
    }

    fn provider(&self) -> Provider {
        Provider::Triton
    }
}
