//! A server model's metadata (inputs, outputs) and the check against what the local model folder
//! says: the image tower's input (name, wire type, `[N,3,H,W]`) and embedding size, the text
//! tower's inputs (`input_ids`, `attention_mask`, sequence length) and embedding size.

use crate::tensor::{DataType, WireFormat};

/// One input or output as the server describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    /// "FP32", "UINT8", ... as the server spells it.
    pub datatype: String,
    /// -1 for a dynamic dimension; the batch dimension first when the model batches.
    pub shape: Vec<i64>,
}

/// A model's metadata (KServe v2 `ModelMetadata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// What the local image tower is: the server's image model must take `input` as
/// `[N, 3, height, width]` of the wire format's type and give `output` as `[N, embed_dim]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageModelSpec {
    pub input: String,
    pub wire: WireFormat,
    pub height: usize,
    pub width: usize,
    pub output: String,
    pub embed_dim: usize,
}

impl ImageModelSpec {
    /// The clipfilter names (`pixel_values` -> `image_embeds`).
    pub fn clip(wire: WireFormat, height: usize, width: usize, embed_dim: usize) -> Self {
        ImageModelSpec {
            input: "pixel_values".into(),
            wire,
            height,
            width,
            output: "image_embeds".into(),
            embed_dim,
        }
    }
}

/// What the local text tower is: `input_ids` INT64 `[N, L]` (L fixed, or `None` when dynamic),
/// `attention_mask` alike when the local graph has one, `output` as `[N, embed_dim]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextModelSpec {
    pub input_ids: String,
    pub attention_mask: Option<String>,
    pub seq_len: Option<usize>,
    pub output: String,
    pub embed_dim: usize,
}

impl TextModelSpec {
    /// The clipfilter names (`input_ids` [+ `attention_mask`] -> `text_embeds`).
    pub fn clip(attention_mask: bool, seq_len: Option<usize>, embed_dim: usize) -> Self {
        TextModelSpec {
            input_ids: "input_ids".into(),
            attention_mask: attention_mask.then(|| "attention_mask".into()),
            seq_len,
            output: "text_embeds".into(),
            embed_dim,
        }
    }
}

/// A model the pool checks on every endpoint before using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    Image(ImageModelSpec),
    Text(TextModelSpec),
}

impl ModelMetadata {
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|t| t.name == name)
    }

    /// Every way the model differs from `spec` (empty: it fits).
    pub fn check(&self, spec: &ModelSpec) -> Vec<String> {
        match spec {
            ModelSpec::Image(s) => self.check_image(s),
            ModelSpec::Text(s) => self.check_text(s),
        }
    }

    /// Every way the model differs from the local image tower (empty: it fits).
    pub fn check_image(&self, spec: &ImageModelSpec) -> Vec<String> {
        let mut problems = Vec::new();
        let expected = [None, Some(3), Some(spec.height), Some(spec.width)];
        self.check_input(
            &spec.input,
            &[spec.wire.datatype()],
            &expected,
            true,
            &mut problems,
        );
        self.check_extra_inputs(&[spec.input.as_str()], &mut problems);
        self.check_embeds(&spec.output, spec.embed_dim, &mut problems);
        problems
    }

    /// Every way the model differs from the local text tower (empty: it fits).
    pub fn check_text(&self, spec: &TextModelSpec) -> Vec<String> {
        let mut problems = Vec::new();
        let expected = [None, spec.seq_len];
        let mut names = vec![spec.input_ids.as_str()];
        self.check_input(
            &spec.input_ids,
            &[DataType::Int64],
            &expected,
            false,
            &mut problems,
        );
        if let Some(mask) = &spec.attention_mask {
            names.push(mask);
            self.check_input(mask, &[DataType::Int64], &expected, false, &mut problems);
        }
        self.check_extra_inputs(&names, &mut problems);
        self.check_embeds(&spec.output, spec.embed_dim, &mut problems);
        problems
    }

    /// `expected`, per dimension: the first is the batch (must be dynamic, -1); then `Some(n)`
    /// means n (or dynamic on the server), `None` a dynamic local dimension (text: the server's
    /// must be dynamic too).
    fn check_input(
        &self,
        name: &str,
        datatypes: &[DataType],
        expected: &[Option<usize>],
        image: bool,
        problems: &mut Vec<String>,
    ) {
        let Some(input) = self.input(name) else {
            problems.push(format!(
                "no input '{name}' (the server's inputs: {})",
                names(&self.inputs)
            ));
            return;
        };
        if !datatypes.iter().any(|d| d.as_str() == input.datatype) {
            let want: Vec<_> = datatypes.iter().map(|d| d.as_str()).collect();
            problems.push(format!(
                "input '{name}' is {}, expected {}",
                input.datatype,
                want.join(" or ")
            ));
        }
        if input.shape.len() != expected.len() {
            problems.push(format!(
                "input '{name}' has shape {}, expected {}",
                shape_text(&input.shape),
                expected_text(expected)
            ));
            return;
        }
        if input.shape[0] != -1 {
            problems.push(format!(
                "input '{name}' has a fixed batch size {} (shape {}); clipfilter sends batches of varying size (max_batch_size > 0 in config.pbtxt)",
                input.shape[0],
                shape_text(&input.shape)
            ));
        }
        for (axis, (&got, want)) in input.shape.iter().zip(expected).enumerate().skip(1) {
            if let Some(want) = want {
                if got != -1 && got != *want as i64 {
                    let what = if image {
                        ["batch", "channels", "height", "width"][axis]
                    } else {
                        "sequence length"
                    };
                    problems.push(format!(
                        "input '{name}' has {what} {got} (shape {}), the local model has {want} (expected {})",
                        shape_text(&input.shape),
                        expected_text(expected)
                    ));
                }
            } else if !image && got != -1 {
                problems.push(format!(
                    "input '{name}' has a fixed sequence length {got}, the local model's is dynamic"
                ));
            }
        }
    }

    fn check_extra_inputs(&self, known: &[&str], problems: &mut Vec<String>) {
        for input in &self.inputs {
            if !known.contains(&input.name.as_str()) {
                problems.push(format!(
                    "the server's model needs input '{}', which the local model does not have",
                    input.name
                ));
            }
        }
    }

    fn check_embeds(&self, name: &str, embed_dim: usize, problems: &mut Vec<String>) {
        let Some(output) = self.output(name) else {
            problems.push(format!(
                "no output '{name}' (the server's outputs: {})",
                names(&self.outputs)
            ));
            return;
        };
        if output.datatype != "FP32" && output.datatype != "FP16" {
            problems.push(format!(
                "output '{name}' is {}, expected FP32 or FP16",
                output.datatype
            ));
        }
        match output.shape.as_slice() {
            [_, d] if *d == -1 || *d == embed_dim as i64 => {}
            [_, d] => problems.push(format!(
                "output '{name}' has embedding size {d}, the local model has {embed_dim}"
            )),
            other => problems.push(format!(
                "output '{name}' has shape {}, expected [-1, {embed_dim}]",
                shape_text(other)
            )),
        }
    }
}

fn names(specs: &[TensorSpec]) -> String {
    if specs.is_empty() {
        return "none".into();
    }
    specs
        .iter()
        .map(|t| t.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(", "))
}

fn expected_text(expected: &[Option<usize>]) -> String {
    let dims: Vec<String> = expected
        .iter()
        .map(|d| d.map_or("-1".to_string(), |n| n.to_string()))
        .collect();
    format!("[{}]", dims.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: &str, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
        }
    }

    fn image(datatype: &str, shape: &[i64], embeds: &[i64]) -> ModelMetadata {
        ModelMetadata {
            name: "m".into(),
            versions: vec!["1".into()],
            platform: "python".into(),
            inputs: vec![spec("pixel_values", datatype, shape)],
            outputs: vec![spec("image_embeds", "FP32", embeds)],
        }
    }

    #[test]
    fn image_fits() {
        let s = ImageModelSpec::clip(WireFormat::Uint8, 224, 224, 32);
        assert!(
            image("UINT8", &[-1, 3, 224, 224], &[-1, 32])
                .check_image(&s)
                .is_empty()
        );
        // dynamic H/W on the server is fine
        assert!(
            image("UINT8", &[-1, 3, -1, -1], &[-1, 32])
                .check_image(&s)
                .is_empty()
        );
    }

    #[test]
    fn image_mismatches_are_named() {
        let s = ImageModelSpec::clip(WireFormat::Fp32, 224, 224, 512);
        let p = image("FP16", &[-1, 3, 336, 336], &[-1, 768]).check_image(&s);
        assert_eq!(
            p,
            vec![
                "input 'pixel_values' is FP16, expected FP32",
                "input 'pixel_values' has height 336 (shape [-1, 3, 336, 336]), the local model has 224 (expected [-1, 3, 224, 224])",
                "input 'pixel_values' has width 336 (shape [-1, 3, 336, 336]), the local model has 224 (expected [-1, 3, 224, 224])",
                "output 'image_embeds' has embedding size 768, the local model has 512",
            ]
        );
        let p = image("FP32", &[1, 3, 224, 224], &[-1, 512]).check_image(&s);
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("fixed batch size 1"), "{p:?}");
        let p = image("FP32", &[-1, 224, 224, 3], &[-1, 512]).check_image(&s);
        assert!(p[0].contains("channels 224"), "{p:?}");
    }

    #[test]
    fn text() {
        let meta = ModelMetadata {
            name: "t".into(),
            versions: vec![],
            platform: "python".into(),
            inputs: vec![
                spec("input_ids", "INT64", &[-1, 77]),
                spec("attention_mask", "INT64", &[-1, 77]),
            ],
            outputs: vec![spec("text_embeds", "FP32", &[-1, 32])],
        };
        assert!(
            meta.check_text(&TextModelSpec::clip(true, Some(77), 32))
                .is_empty()
        );
        let p = meta.check_text(&TextModelSpec::clip(false, None, 32));
        assert_eq!(
            p,
            vec![
                "input 'input_ids' has a fixed sequence length 77, the local model's is dynamic",
                "the server's model needs input 'attention_mask', which the local model does not have",
            ]
        );
    }
}
