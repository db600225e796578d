//! The text tower: `input_ids [N, L]` (and `attention_mask` when the graph takes it) ->
//! `text_embeds [N, D]`, with the tokenizer in front and caches of embeddings by prompt: a
//! bounded one in memory and, when the engine gives one, the disk cache shared by every process
//! ([`super::cache`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType};

use super::cache::{self, DiskCache};
use super::memory_cache::{EmbeddingCache, TEXT_CACHE_BYTES};
use super::{Port, Provider, SessionConfig, build_session, find_output, names, port};
use crate::error::{Error, Result};
use crate::model::ModelDir;
use crate::text::ClipTokenizer;
use crate::tower::TextTower;

/// The text tower on an ONNX Runtime session.
pub struct LocalText {
    session: Session,
    ids: Port,
    mask: Option<Port>,
    output: Port,
    /// Sequence length when the graph fixes it.
    fixed_len: Option<usize>,
    path: PathBuf,
    provider: Provider,
}

/// A text tower (local or remote) with its tokenizer and caches of embeddings.
pub struct TextEncoder {
    tower: Box<dyn TextTower>,
    tokenizer: ClipTokenizer,
    /// Raw (not normalised) embeddings by prompt text, bounded by [`TEXT_CACHE_BYTES`].
    memory: EmbeddingCache,
    /// The shared disk cache and the key prefix of this tower (its fingerprint and variant).
    disk: Option<(Arc<DiskCache>, String)>,
}

impl LocalText {
    /// Loads the text tower of `model` on ONNX Runtime.
    pub fn load(model: &ModelDir, cfg: &SessionConfig) -> Result<Self> {
        let path = &model.text_onnx;
        let (session, provider) = build_session(path, cfg, "text encoder")?;
        let inputs: Vec<Port> = session.inputs().iter().filter_map(port).collect();
        let bad =
            |message: String| Error::model(&model.dir, format!("{}: {message}", path.display()));
        let mut ids = None;
        let mut mask = None;
        for p in inputs {
            match p.name.as_str() {
                "input_ids" => ids = Some(p),
                "attention_mask" => mask = Some(p),
                other => {
                    return Err(bad(format!(
                        "unexpected input `{other}` (inputs: {})",
                        names(session.inputs())
                    )));
                }
            }
        }
        let ids = ids.ok_or_else(|| {
            bad(format!(
                "no `input_ids` input (inputs: {})",
                names(session.inputs())
            ))
        })?;
        for p in std::iter::once(&ids).chain(mask.as_ref()) {
            if !matches!(p.ty, TensorElementType::Int64 | TensorElementType::Int32)
                || p.shape.len() != 2
            {
                return Err(bad(format!(
                    "input `{}` must be an integer tensor [batch, sequence], found {:?} {:?}",
                    p.name, p.ty, p.shape
                )));
            }
        }
        let fixed_len = ids
            .shape
            .get(1)
            .copied()
            .filter(|n| *n > 0)
            .map(|n| n as usize);
        let output = find_output(&session, "text_embeds", path)?;
        Ok(LocalText {
            session,
            ids,
            mask,
            output,
            fixed_len,
            path: path.clone(),
            provider,
        })
    }

    /// Whether the graph takes an attention mask.
    pub fn takes_attention_mask(&self) -> bool {
        self.mask.is_some()
    }
}

impl TextEncoder {
    /// Loads the text tower of `model` on ONNX Runtime, and its tokenizer.
    pub fn load(model: &ModelDir, cfg: &SessionConfig) -> Result<Self> {
        TextEncoder::new(model, Box::new(LocalText::load(model, cfg)?))
    }

    /// The tokenizer of `model` in front of `tower`.
    pub fn new(model: &ModelDir, tower: Box<dyn TextTower>) -> Result<Self> {
        let context_length = tower.fixed_len().unwrap_or(model.context_length);
        let tokenizer = ClipTokenizer::from_file(
            &model.tokenizer_json,
            context_length,
            model.pad_token.as_deref(),
        )?;
        Ok(TextEncoder {
            tower,
            tokenizer,
            memory: EmbeddingCache::new(TEXT_CACHE_BYTES),
            disk: None,
        })
    }

    /// Also looks embeddings up in (and adds them to) `disk`, under keys that start with
    /// `model_key` (what identifies this tower: its files' fingerprint and variant).
    pub fn set_disk_cache(&mut self, disk: Arc<DiskCache>, model_key: String) {
        self.disk = Some((disk, model_key));
    }

    /// The provider running this tower.
    pub fn provider(&self) -> Provider {
        self.tower.provider()
    }

    /// The tokenizer in use.
    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Sequence length fixed by the graph, if any.
    pub fn fixed_sequence_length(&self) -> Option<usize> {
        self.tower.fixed_len()
    }

    /// Raw embeddings of `texts`: from memory, else from the disk cache, else from the tower
    /// (in batches of up to 64; what the tower computes goes to both caches).
    pub fn embed(&mut self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let mut found: HashMap<&str, Vec<f32>> = HashMap::new();
        let mut missing: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for t in texts {
            if !seen.insert(*t) {
                continue;
            }
            match self.memory.get(t) {
                Some(e) => {
                    found.insert(t, e);
                }
                None => missing.push(t),
            }
        }
        if let Some((disk, model)) = &self.disk
            && !missing.is_empty()
        {
            let keys: Vec<cache::Key> = missing
                .iter()
                .map(|t| cache::key(&[model.as_bytes(), b"text", t.as_bytes()]))
                .collect();
            match disk.get_many(&keys) {
                Ok(stored) => {
                    let mut still = Vec::new();
                    for (t, e) in missing.iter().zip(stored) {
                        match e {
                            Some(e) => {
                                self.memory.insert((*t).to_string(), e.clone());
                                found.insert(t, e);
                            }
                            None => still.push(*t),
                        }
                    }
                    missing = still;
                }
                Err(e) => tracing::warn!(error = %e, "embedding cache not readable"),
            }
        }
        for chunk in missing.chunks(64) {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|t| self.tokenizer.encode(t))
                .collect::<Result<_>>()?;
            let embeds = self.run_ids(&ids)?;
            if let Some((disk, model)) = &self.disk {
                let entries: Vec<(cache::Key, &[f32])> = chunk
                    .iter()
                    .zip(&embeds)
                    .map(|(t, e)| {
                        (
                            cache::key(&[model.as_bytes(), b"text", t.as_bytes()]),
                            e.as_slice(),
                        )
                    })
                    .collect();
                if let Err(e) = disk.put_many(&entries) {
                    tracing::warn!(error = %e, "embedding cache not written");
                }
            }
            for (text, e) in chunk.iter().zip(embeds) {
                self.memory.insert((*text).to_string(), e.clone());
                found.insert(text, e);
            }
        }
        Ok(texts
            .iter()
            .map(|t| found.get(t).cloned().unwrap_or_default())
            .collect())
    }

    /// Runs the tower on token id sequences (each with start and end tokens).
    pub fn run_ids(&mut self, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let _span = tracing::debug_span!("text_encode", batch = batch.len(), provider = %self.tower.provider())
            .entered();
        let (_, _, pad) = self.tokenizer.special_ids();
        let longest = batch.iter().map(Vec::len).max().unwrap_or(0);
        let len = self.tower.fixed_len().unwrap_or(longest);
        if longest > len {
            return Err(Error::invalid(
                "token sequence",
                format!("{longest} tokens exceed the model's {len}"),
            ));
        }
        let n = batch.len();
        let mut ids = vec![i64::from(pad); n * len];
        let mut mask = vec![0i64; n * len];
        for (row, seq) in batch.iter().enumerate() {
            for (i, &t) in seq.iter().enumerate() {
                ids[row * len + i] = i64::from(t);
                mask[row * len + i] = 1;
            }
        }
        self.tower.run(ids, mask, n, len)
    }
}

impl TextTower for LocalText {
    fn fixed_len(&self) -> Option<usize> {
        self.fixed_len
    }

    fn provider(&self) -> Provider {
        self.provider
    }

    fn run(
        &mut self,
        ids: Vec<i64>,
        mask: Vec<i64>,
        n: usize,
        len: usize,
    ) -> Result<Vec<Vec<f32>>> {
        let ctx = |what: &str| format!("{what} {}", self.path.display());
        let tensor = |p: &Port, v: Vec<i64>| -> Result<DynValue> {
            let shape = [n, len];
            match p.ty {
                TensorElementType::Int32 => {
                    Tensor::from_array((shape, v.into_iter().map(|x| x as i32).collect::<Vec<_>>()))
                        .map(|t| t.into_dyn())
                }
                _ => Tensor::from_array((shape, v)).map(|t| t.into_dyn()),
            }
            .map_err(|e| Error::onnx(ctx("input for"), e))
        };
        let mut inputs: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = vec![(self.ids.name.clone().into(), tensor(&self.ids, ids)?.into())];
        if let Some(m) = &self.mask {
            inputs.push((m.name.clone().into(), tensor(m, mask)?.into()));
        }
        let outputs = self
            .session
            .run(inputs)
            .map_err(|e| Error::onnx(ctx("running"), e))?;
        let value = &outputs[self.output.name.as_str()];
        let (dims, flat): (Vec<i64>, Vec<f32>) = match self.output.ty {
            TensorElementType::Float16 => {
                let (s, d) = value
                    .try_extract_tensor::<f16>()
                    .map_err(|e| Error::onnx(ctx("output of"), e))?;
                (
                    s.iter().copied().collect(),
                    d.iter().map(|x| x.to_f32()).collect(),
                )
            }
            _ => {
                let (s, d) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| Error::onnx(ctx("output of"), e))?;
                (s.iter().copied().collect(), d.to_vec())
            }
        };
        if dims.len() != 2 || dims[0] as usize != n || dims[1] <= 0 {
            return Err(Error::model(
                self.path.parent().unwrap_or(Path::new(".")),
                format!(
                    "{}: output `{}` has shape {dims:?}, expected [{n}, D]",
                    self.path.display(),
                    self.output.name
                ),
            ));
        }
        Ok(flat
            .chunks_exact(dims[1] as usize)
            .map(<[f32]>::to_vec)
            .collect())
    }
}
