//! The image tower: `pixel_values [N, 3, H, W]` -> `image_embeds [N, D]`.

use std::path::{Path, PathBuf};

use half::f16;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};

use super::{Port, Provider, SessionConfig, build_session, find_output, names, port};
use crate::error::{Error, Result};
use crate::tower::ImageTower;

/// A loaded image tower. `encode` takes `&mut self`: one owner (the inference worker) runs it.
pub struct ImageEncoder {
    session: Session,
    input: Port,
    output: Port,
    path: PathBuf,
    provider: Provider,
    /// (height, width) the graph takes.
    size: (u32, u32),
    /// Embedding width, once known.
    dim: Option<usize>,
    half_input: Vec<f16>,
}

impl ImageEncoder {
    /// Loads `path`; `size` is the (height, width) the preprocessor produces, checked against
    /// the graph when the graph fixes it.
    pub fn load(path: &Path, size: (u32, u32), cfg: &SessionConfig) -> Result<Self> {
        let (session, provider) = build_session(path, cfg, "image encoder")?;
        let dir = path.parent().unwrap_or(path);
        let inputs: Vec<Port> = session.inputs().iter().filter_map(port).collect();
        let input = match inputs.iter().position(|p| p.name == "pixel_values") {
            Some(i) => inputs.into_iter().nth(i),
            None if inputs.len() == 1 => inputs.into_iter().next(),
            None => None,
        }
        .ok_or_else(|| {
            Error::model(
                dir,
                format!(
                    "{}: expected one input `pixel_values` (inputs: {})",
                    path.display(),
                    names(session.inputs())
                ),
            )
        })?;
        if !matches!(
            input.ty,
            TensorElementType::Float32 | TensorElementType::Float16
        ) || input.shape.len() != 4
        {
            return Err(Error::model(
                dir,
                format!(
                    "{}: input `{}` must be a float tensor [batch, 3, H, W], found {:?} {:?}",
                    path.display(),
                    input.name,
                    input.ty,
                    input.shape
                ),
            ));
        }
        let (h, w) = (input.shape[2], input.shape[3]);
        if (h > 0 && h != i64::from(size.0))
            || (w > 0 && w != i64::from(size.1))
            || (input.shape[1] > 0 && input.shape[1] != 3)
        {
            return Err(Error::model(
                dir,
                format!(
                    "{} takes images of {}x{} but preprocessor_config.json produces {}x{}",
                    path.display(),
                    w,
                    h,
                    size.1,
                    size.0
                ),
            ));
        }
        let output = find_output(&session, "image_embeds", path)?;
        let dim = output
            .shape
            .last()
            .copied()
            .filter(|d| *d > 0)
            .map(|d| d as usize);
        Ok(ImageEncoder {
            session,
            input,
            output,
            path: path.to_path_buf(),
            provider,
            size,
            dim,
            half_input: Vec::new(),
        })
    }

    /// The provider running this tower.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Embedding width, if the graph declares it (otherwise known after the first batch).
    pub fn dim(&self) -> Option<usize> {
        self.dim
    }

    /// Input (height, width).
    pub fn input_size(&self) -> (u32, u32) {
        self.size
    }

    /// Floats per image in the input.
    pub fn image_len(&self) -> usize {
        3 * self.size.0 as usize * self.size.1 as usize
    }

    /// Runs `batch` preprocessed images (`batch * 3 * H * W` floats) and writes `batch * D` raw
    /// (not normalised) embeddings into `out`.
    pub fn encode(&mut self, pixels: &[f32], batch: usize, out: &mut Vec<f32>) -> Result<()> {
        if batch == 0 {
            out.clear();
            return Ok(());
        }
        crate::tower::check_batch(pixels, batch, self.image_len())?;
        let _span =
            tracing::debug_span!("image_encode", batch, provider = %self.provider).entered();
        let shape = [batch, 3, self.size.0 as usize, self.size.1 as usize];
        let context = || format!("running {}", self.path.display());
        let input_value = match self.input.ty {
            TensorElementType::Float16 => {
                self.half_input.clear();
                self.half_input
                    .extend(pixels.iter().map(|x| f16::from_f32(*x)));
                TensorRef::from_array_view((shape, &self.half_input[..])).map(|t| t.into_dyn())
            }
            _ => TensorRef::from_array_view((shape, pixels)).map(|t| t.into_dyn()),
        }
        .map_err(|e| Error::onnx(context(), e))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.name.as_str() => input_value])
            .map_err(|e| Error::onnx(format!("running {}", self.path.display()), e))?;
        let value = &outputs[self.output.name.as_str()];
        out.clear();
        let dims: Vec<i64> = match self.output.ty {
            TensorElementType::Float16 => {
                let (s, data) = value
                    .try_extract_tensor::<f16>()
                    .map_err(|e| Error::onnx(format!("output of {}", self.path.display()), e))?;
                out.extend(data.iter().map(|x| x.to_f32()));
                s.iter().copied().collect()
            }
            _ => {
                let (s, data) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| Error::onnx(format!("output of {}", self.path.display()), e))?;
                out.extend_from_slice(data);
                s.iter().copied().collect()
            }
        };
        if dims.len() != 2 || dims[0] as usize != batch {
            return Err(Error::model(
                self.path.parent().unwrap_or(&self.path),
                format!(
                    "{}: output `{}` has shape {dims:?}, expected [{batch}, D]",
                    self.path.display(),
                    self.output.name
                ),
            ));
        }
        self.dim = Some(dims[1] as usize);
        Ok(())
    }
}

impl ImageTower for ImageEncoder {
    fn image_len(&self) -> usize {
        ImageEncoder::image_len(self)
    }

    fn encode(&mut self, pixels: &[f32], batch: usize, out: &mut Vec<f32>) -> Result<()> {
        ImageEncoder::encode(self, pixels, batch, out)
    }

    fn provider(&self) -> Provider {
        self.provider
    }
}
