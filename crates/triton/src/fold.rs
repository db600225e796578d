//! Folding CLIP's input normalisation into an image-tower ONNX model, for a smaller wire format.
//!
//! The image tower takes `pixel_values` float32 `[N,3,H,W]`, already rescaled and normalised:
//! `(x * rescale - mean[c]) / std[c]`. [`FoldInput::Uint8`] rewrites the model to take the RGB
//! bytes themselves (uint8, same name and shape) and prepends
//!
//! ```text
//! Cast(to float32) -> Div(1 / rescale) -> Sub(mean [1,3,1,1]) -> Div(std [1,3,1,1])
//! ```
//!
//! (with `rescale` = 1/255, `float32(v) / 255` is exactly the float32 of `v * (1/255)` computed in
//! float64, what clipfilter's preprocessing and transformers compute, for all 256 values, so the
//! folded model sees the same float32 inputs bit for bit). [`FoldInput::Fp16`] takes float16
//! `pixel_values` (already normalised) and prepends one `Cast(to float32)`. The outputs, every
//! weight and every other node stay as they are.
//!
//! Models with external data (weights in separate files, needed above 2 GB) are refused.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, Result};
use crate::proto::onnx::{
    AttributeProto, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto,
    attribute_proto::AttributeType, tensor_proto, type_proto,
};

/// The new input type of the folded model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldInput {
    /// RGB bytes `[N,3,H,W]`, normalised inside the model.
    Uint8,
    /// Normalised values as float16 `[N,3,H,W]`, cast to float32 inside the model.
    Fp16,
}

/// The preprocessing the image tower expects (from the model folder's `preprocessor_config.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Normalisation {
    /// `rescale_factor` (1/255), or 1 when `do_rescale` is false.
    pub rescale: f64,
    /// `image_mean` (0 when `do_normalize` is false).
    pub mean: [f32; 3],
    /// `image_std` (1 when `do_normalize` is false).
    pub std: [f32; 3],
}

impl Normalisation {
    /// OpenAI CLIP's values (rescale 1/255, mean and std of its training set), written as in
    /// its preprocessor_config.json.
    #[allow(clippy::excessive_precision)]
    pub const CLIP: Normalisation = Normalisation {
        rescale: 1.0 / 255.0,
        mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
        std: [0.268_629_54, 0.261_302_58, 0.275_777_11],
    };
}

/// What to fold.
#[derive(Debug, Clone, PartialEq)]
pub struct FoldOptions {
    pub input: FoldInput,
    /// The image input's name (clipfilter's models: `pixel_values`).
    pub input_name: String,
    /// Used by [`FoldInput::Uint8`].
    pub normalisation: Normalisation,
}

impl FoldOptions {
    pub fn new(input: FoldInput, normalisation: Normalisation) -> Self {
        FoldOptions {
            input,
            input_name: "pixel_values".into(),
            normalisation,
        }
    }
}

/// Reads the ONNX model at `src`, folds it and writes the result to `dst` (through a temporary
/// file in the same folder, renamed at the end).
pub fn fold_file(src: &Path, dst: &Path, options: &FoldOptions) -> Result<()> {
    let bytes = std::fs::read(src).map_err(|cause| Error::Io {
        path: src.to_path_buf(),
        cause,
    })?;
    let folded = fold_bytes(Bytes::from(bytes), options, src)?;
    let tmp = dst.with_extension("onnx.tmp");
    std::fs::write(&tmp, &folded).map_err(|cause| Error::Io {
        path: tmp.clone(),
        cause,
    })?;
    std::fs::rename(&tmp, dst).map_err(|cause| Error::Io {
        path: dst.to_path_buf(),
        cause,
    })
}

/// Folds a serialised model; `path` only names it in errors.
pub fn fold_bytes(bytes: Bytes, options: &FoldOptions, path: &Path) -> Result<Vec<u8>> {
    let mut model = ModelProto::decode(bytes).map_err(|e| Error::File {
        path: path.to_path_buf(),
        reason: format!("not an ONNX model: {e}"),
    })?;
    fold_model(&mut model, options, path)?;
    let size = model.encoded_len();
    if size > i32::MAX as usize {
        return Err(Error::File {
            path: path.to_path_buf(),
            reason: format!("the folded model would be {size} bytes, over protobuf's 2 GiB"),
        });
    }
    Ok(model.encode_to_vec())
}

/// Folds `model` in place; `path` only names it in errors.
pub fn fold_model(model: &mut ModelProto, options: &FoldOptions, path: &Path) -> Result<()> {
    let fail = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let opset = model
        .opset_import
        .iter()
        .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")))
        .and_then(|o| o.version)
        .ok_or_else(|| fail("the model imports no default-domain opset".into()))?;
    if opset < 7 {
        return Err(fail(format!(
            "opset {opset} is older than 7 (no broadcasting Div/Sub)"
        )));
    }
    let graph = model
        .graph
        .as_mut()
        .ok_or_else(|| fail("the model has no graph".into()))?;
    if let Some(name) = external_data(graph) {
        return Err(fail(format!(
            "tensor '{name}' is stored as external data (a separate weights file); only self-contained models can be folded"
        )));
    }
    let name = options.input_name.as_str();
    let index = graph
        .input
        .iter()
        .position(|i| i.name.as_deref() == Some(name))
        .ok_or_else(|| {
            let inputs: Vec<_> = graph.input.iter().filter_map(|i| i.name.clone()).collect();
            fail(format!("no input '{name}' (inputs: {})", inputs.join(", ")))
        })?;
    if graph
        .initializer
        .iter()
        .any(|t| t.name.as_deref() == Some(name))
    {
        return Err(fail(format!(
            "input '{name}' also has an initializer (a default value); cannot fold"
        )));
    }
    if graph.output.iter().any(|o| o.name.as_deref() == Some(name)) {
        return Err(fail(format!(
            "input '{name}' is also a graph output; cannot fold"
        )));
    }
    let tensor_type = match graph.input[index]
        .r#type
        .as_mut()
        .and_then(|t| t.value.as_mut())
    {
        Some(type_proto::Value::TensorType(t)) => t,
        _ => return Err(fail(format!("input '{name}' is not a tensor"))),
    };
    let float = tensor_proto::DataType::Float as i32;
    if tensor_type.elem_type != Some(float) {
        return Err(fail(format!(
            "input '{name}' has element type {}, not float32 (already folded?)",
            elem_type_name(tensor_type.elem_type)
        )));
    }
    if let Some(shape) = &tensor_type.shape {
        use crate::proto::onnx::tensor_shape_proto::dimension::Value;
        let channels = shape.dim.get(1).and_then(|d| match d.value {
            Some(Value::DimValue(v)) => Some(v),
            _ => None,
        });
        if shape.dim.len() != 4 || channels.is_some_and(|c| c != 3) {
            return Err(fail(format!(
                "input '{name}' is not [N,3,H,W] ({} dimensions, channels {channels:?})",
                shape.dim.len()
            )));
        }
    }
    tensor_type.elem_type = Some(match options.input {
        FoldInput::Uint8 => tensor_proto::DataType::Uint8 as i32,
        FoldInput::Fp16 => tensor_proto::DataType::Float16 as i32,
    });

    let mut names = Names::of(graph);
    let normalised = names.fresh(&format!("{name}/clipfilter_normalised"));
    rename_uses(graph, name, &normalised);
    for info in &mut graph.value_info {
        if info.name.as_deref() == Some(name) {
            info.name = Some(normalised.clone());
        }
    }

    let mut nodes = Vec::new();
    let mut note = String::new();
    match options.input {
        FoldInput::Fp16 => {
            nodes.push(cast_to_float(&mut names, name, &normalised));
            note.push_str("pixel_values float16, Cast to float32");
        }
        FoldInput::Uint8 => {
            let n = options.normalisation;
            let divisor = (1.0 / n.rescale) as f32;
            if !(divisor.is_finite() && divisor > 0.0) || n.std.contains(&0.0) {
                return Err(fail(format!(
                    "unusable normalisation: rescale {}, std {:?}",
                    n.rescale, n.std
                )));
            }
            let cast = names.fresh(&format!("{name}/clipfilter_float"));
            let scaled = names.fresh(&format!("{name}/clipfilter_rescaled"));
            let centred = names.fresh(&format!("{name}/clipfilter_centred"));
            let c_divisor = names.fresh("clipfilter_fold/rescale_divisor");
            let c_mean = names.fresh("clipfilter_fold/mean");
            let c_std = names.fresh("clipfilter_fold/std");
            graph
                .initializer
                .push(float_tensor(&c_divisor, vec![], &[divisor]));
            graph
                .initializer
                .push(float_tensor(&c_mean, vec![1, 3, 1, 1], &n.mean));
            graph
                .initializer
                .push(float_tensor(&c_std, vec![1, 3, 1, 1], &n.std));
            nodes.push(cast_to_float(&mut names, name, &cast));
            nodes.push(binary(&mut names, "Div", &cast, &c_divisor, &scaled));
            nodes.push(binary(&mut names, "Sub", &scaled, &c_mean, &centred));
            nodes.push(binary(&mut names, "Div", &centred, &c_std, &normalised));
            note = format!(
                "pixel_values uint8 RGB; (float32(x) / {divisor} - mean) / std, mean {:?}, std {:?}",
                n.mean, n.std
            );
        }
    }
    nodes.append(&mut graph.node);
    graph.node = nodes;
    model.metadata_props.push(StringStringEntryProto {
        key: Some("clipfilter.fold".into()),
        value: Some(note),
    });
    Ok(())
}

fn elem_type_name(t: Option<i32>) -> String {
    t.and_then(|t| tensor_proto::DataType::try_from(t).ok())
        .map_or_else(|| format!("{t:?}"), |d| d.as_str_name().to_string())
}

/// The first tensor stored as external data, in the graph or any subgraph.
fn external_data(graph: &GraphProto) -> Option<String> {
    let external = tensor_proto::DataLocation::External as i32;
    let is_external = |t: &TensorProto| t.data_location == Some(external);
    let name = |t: &TensorProto| t.name.clone().unwrap_or_default();
    for t in &graph.initializer {
        if is_external(t) {
            return Some(name(t));
        }
    }
    for s in &graph.sparse_initializer {
        if let Some(t) = s.values.as_ref().filter(|t| is_external(t)) {
            return Some(name(t));
        }
    }
    for node in &graph.node {
        for a in &node.attribute {
            if let Some(t) = a.t.as_ref().filter(|t| is_external(t)) {
                return Some(name(t));
            }
            if let Some(t) = a.tensors.iter().find(|t| is_external(t)) {
                return Some(name(t));
            }
            let found = a.g.iter().chain(&a.graphs).find_map(external_data);
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

/// Replaces `from` by `to` in the inputs of every node, including those of subgraphs that do
/// not define `from` themselves.
fn rename_uses(graph: &mut GraphProto, from: &str, to: &str) {
    for node in &mut graph.node {
        for input in &mut node.input {
            if input == from {
                *input = to.to_string();
            }
        }
        for a in &mut node.attribute {
            for g in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                if !defines(g, from) {
                    rename_uses(g, from, to);
                }
            }
        }
    }
}

fn defines(graph: &GraphProto, name: &str) -> bool {
    graph.input.iter().any(|i| i.name.as_deref() == Some(name))
        || graph
            .initializer
            .iter()
            .any(|t| t.name.as_deref() == Some(name))
        || graph
            .node
            .iter()
            .any(|n| n.output.iter().any(|o| o == name))
}

/// Every name used in a graph (tensors and nodes, subgraphs included), to make new unique ones.
struct Names(std::collections::HashSet<String>);

impl Names {
    fn of(graph: &GraphProto) -> Self {
        fn collect(g: &GraphProto, set: &mut std::collections::HashSet<String>) {
            let infos = g.input.iter().chain(&g.output).chain(&g.value_info);
            set.extend(infos.filter_map(|i| i.name.clone()));
            set.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
            for n in &g.node {
                set.extend(n.input.iter().chain(&n.output).cloned());
                set.extend(n.name.clone());
                for a in &n.attribute {
                    for sub in a.g.iter().chain(&a.graphs) {
                        collect(sub, set);
                    }
                }
            }
        }
        let mut set = std::collections::HashSet::new();
        collect(graph, &mut set);
        Names(set)
    }

    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.0.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.0.insert(name.clone());
        name
    }
}

fn float_tensor(name: &str, dims: Vec<i64>, values: &[f32]) -> TensorProto {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    TensorProto {
        name: Some(name.to_string()),
        dims,
        data_type: Some(tensor_proto::DataType::Float as i32),
        raw_data: Some(Bytes::from(raw)),
        ..Default::default()
    }
}

fn cast_to_float(names: &mut Names, input: &str, output: &str) -> NodeProto {
    NodeProto {
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        name: Some(names.fresh("clipfilter_fold/Cast")),
        op_type: Some("Cast".into()),
        attribute: vec![AttributeProto {
            name: Some("to".into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(tensor_proto::DataType::Float as i64),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn binary(names: &mut Names, op: &str, a: &str, b: &str, output: &str) -> NodeProto {
    NodeProto {
        input: vec![a.to_string(), b.to_string()],
        output: vec![output.to_string()],
        name: Some(names.fresh(&format!("clipfilter_fold/{op}"))),
        op_type: Some(op.to_string()),
        ..Default::default()
    }
}

/// The `rescale`, `mean` and `std` of a model folder's `preprocessor_config.json` (with
/// transformers' defaults for missing keys: rescale 1/255; `do_normalize` false means none).
pub fn normalisation_from_preprocessor_config(path: &Path) -> Result<Normalisation> {
    let text = std::fs::read_to_string(path).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let bad = |reason: String| Error::File {
        path: PathBuf::from(path),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let flag = |key: &str| json.get(key).and_then(|v| v.as_bool()).unwrap_or(true);
    let triple = |key: &str| -> Result<[f32; 3]> {
        let list = json
            .get(key)
            .and_then(|v| v.as_array())
            .ok_or_else(|| bad(format!("`{key}` is missing or not a list")))?;
        let values: Vec<f32> = list
            .iter()
            .filter_map(|v| v.as_f64().map(|f| f as f32))
            .collect();
        <[f32; 3]>::try_from(values.as_slice())
            .map_err(|_| bad(format!("`{key}` must be 3 numbers")))
    };
    let rescale = if flag("do_rescale") {
        match json.get("rescale_factor") {
            None => 1.0 / 255.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad("`rescale_factor` is not a number".into()))?,
        }
    } else {
        1.0
    };
    let (mean, std) = if flag("do_normalize") {
        (triple("image_mean")?, triple("image_std")?)
    } else {
        ([0.0; 3], [1.0; 3])
    };
    Ok(Normalisation { rescale, mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::onnx::{
        OperatorSetIdProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_shape_proto,
    };

    fn input(name: &str, elem: i32) -> ValueInfoProto {
        use tensor_shape_proto::{Dimension, dimension::Value};
        let dims = [
            Value::DimParam("batch".into()),
            Value::DimValue(3),
            Value::DimValue(4),
            Value::DimValue(4),
        ];
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem),
                    shape: Some(TensorShapeProto {
                        dim: dims
                            .into_iter()
                            .map(|v| Dimension {
                                value: Some(v),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn tiny() -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    input: vec!["pixel_values".into()],
                    output: vec!["image_embeds".into()],
                    op_type: Some("ReduceMean".into()),
                    ..Default::default()
                }],
                input: vec![input("pixel_values", tensor_proto::DataType::Float as i32)],
                output: vec![ValueInfoProto {
                    name: Some("image_embeds".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn uint8_prepends_the_normalisation() {
        let mut m = tiny();
        let o = FoldOptions::new(FoldInput::Uint8, Normalisation::CLIP);
        fold_model(&mut m, &o, Path::new("m.onnx")).unwrap();
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<_> = g.node.iter().filter_map(|n| n.op_type.as_deref()).collect();
        assert_eq!(ops, ["Cast", "Div", "Sub", "Div", "ReduceMean"]);
        assert_eq!(g.node[0].input, ["pixel_values"]);
        assert_eq!(g.node[4].input, ["pixel_values/clipfilter_normalised"]);
        assert_eq!(g.node[3].output, ["pixel_values/clipfilter_normalised"]);
        let Some(type_proto::Value::TensorType(t)) = &g.input[0].r#type.as_ref().unwrap().value
        else {
            panic!("not a tensor")
        };
        assert_eq!(t.elem_type, Some(tensor_proto::DataType::Uint8 as i32));
        assert_eq!(t.shape.as_ref().unwrap().dim.len(), 4);
        let divisor = &g.initializer[0];
        assert_eq!(divisor.raw_data.as_deref(), Some(&255f32.to_le_bytes()[..]));
        // folding twice is refused
        let e = fold_model(&mut m, &o, Path::new("m.onnx")).unwrap_err();
        assert!(e.to_string().contains("already folded"), "{e}");
    }

    #[test]
    fn fp16_casts() {
        let mut m = tiny();
        let o = FoldOptions::new(FoldInput::Fp16, Normalisation::CLIP);
        fold_model(&mut m, &o, Path::new("m.onnx")).unwrap();
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node.len(), 2);
        assert!(g.initializer.is_empty());
    }

    #[test]
    fn refusals_are_clear() {
        let mut m = tiny();
        let mut o = FoldOptions::new(FoldInput::Uint8, Normalisation::CLIP);
        o.input_name = "image".into();
        let e = fold_model(&mut m, &o, Path::new("m.onnx")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.onnx: no input 'image' (inputs: pixel_values)"
        );

        let mut m = tiny();
        m.graph.as_mut().unwrap().initializer.push(TensorProto {
            name: Some("w".into()),
            data_location: Some(tensor_proto::DataLocation::External as i32),
            ..Default::default()
        });
        let o = FoldOptions::new(FoldInput::Uint8, Normalisation::CLIP);
        let e = fold_model(&mut m, &o, Path::new("m.onnx")).unwrap_err();
        assert!(
            e.to_string().contains("'w' is stored as external data"),
            "{e}"
        );

        let e = fold_bytes(Bytes::from_static(b"\xff\xff"), &o, Path::new("x.onnx")).unwrap_err();
        assert!(
            e.to_string().starts_with("x.onnx: not an ONNX model"),
            "{e}"
        );
    }
}
