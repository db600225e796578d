//! The inputs and outputs of an ONNX model's graph, read without loading its weights.
//!
//! A CLIP image tower is hundreds of megabytes of initializers; its interface is a few hundred
//! bytes. [`read_graph_io`] walks the protobuf wire format of the file, seeking past every field
//! but the graph's `input` (11) and `output` (12) lists, and decodes only those
//! `ValueInfoProto`s. Used to check a server's model against the local folder without an ONNX
//! Runtime session, and to write `config.pbtxt` files.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};
use crate::proto::onnx::{ValueInfoProto, tensor_proto, tensor_shape_proto, type_proto};
use crate::tensor::DataType;

/// One graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX's element type number (1 float, 2 uint8, 7 int64, 10 float16, ...).
    pub elem_type: i32,
    /// Each dimension; -1 where it is symbolic or unknown.
    pub shape: Vec<i64>,
}

impl TensorInfo {
    /// The KServe v2 data type of the element type, when this crate knows it.
    pub fn datatype(&self) -> Option<DataType> {
        use tensor_proto::DataType as T;
        Some(match T::try_from(self.elem_type).ok()? {
            T::Float => DataType::Fp32,
            T::Float16 => DataType::Fp16,
            T::Double => DataType::Fp64,
            T::Uint8 => DataType::Uint8,
            T::Int8 => DataType::Int8,
            T::Int32 => DataType::Int32,
            T::Int64 => DataType::Int64,
            T::Bool => DataType::Bool,
            _ => return None,
        })
    }
}

/// A graph's interface.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphIo {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

impl GraphIo {
    pub fn input(&self, name: &str) -> Option<&TensorInfo> {
        self.inputs.iter().find(|t| t.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorInfo> {
        self.outputs.iter().find(|t| t.name == name)
    }
}

/// ModelProto.graph, GraphProto.input, GraphProto.output.
const MODEL_GRAPH: u64 = 7;
const GRAPH_INPUT: u64 = 11;
const GRAPH_OUTPUT: u64 = 12;
/// Larger than any plausible ValueInfoProto: a corrupt length is an error, not an allocation.
const MAX_VALUE_INFO: u64 = 1 << 20;

struct Walker {
    reader: BufReader<File>,
    pos: u64,
    path: PathBuf,
}

impl Walker {
    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::File {
            path: self.path.clone(),
            reason: format!("not an ONNX model: {}", reason.into()),
        }
    }

    fn io(&self, cause: std::io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            cause,
        }
    }

    /// A varint, or `None` at the end of the file (only allowed before a tag).
    fn varint(&mut self) -> Result<Option<u64>> {
        let mut value = 0u64;
        for i in 0..10 {
            let mut byte = [0u8];
            match self.reader.read(&mut byte) {
                Ok(0) if i == 0 => return Ok(None),
                Ok(0) => return Err(self.bad("the file ends inside a number")),
                Ok(_) => {}
                Err(e) => return Err(self.io(e)),
            }
            self.pos += 1;
            value |= u64::from(byte[0] & 0x7f) << (7 * i);
            if byte[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err(self.bad("a number longer than 10 bytes"))
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let n = i64::try_from(n).map_err(|_| self.bad("a field longer than the file"))?;
        self.reader.seek_relative(n).map_err(|e| self.io(e))?;
        self.pos += n as u64;
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n as usize];
        self.reader
            .read_exact(&mut buf)
            .map_err(|e| self.bad(format!("the file ends inside a field ({e})")))?;
        self.pos += n;
        Ok(buf)
    }

    /// The next field before `end` as (number, wire type, length of a length-delimited field).
    fn field(&mut self, end: u64) -> Result<Option<(u64, u64, u64)>> {
        if self.pos >= end {
            return Ok(None);
        }
        let Some(key) = self.varint()? else {
            return Ok(None);
        };
        let (number, wire) = (key >> 3, key & 7);
        let len = match wire {
            0 => {
                self.varint()?
                    .ok_or_else(|| self.bad("the file ends inside a number"))?;
                0
            }
            1 => {
                self.skip(8)?;
                0
            }
            2 => self
                .varint()?
                .ok_or_else(|| self.bad("the file ends inside a length"))?,
            5 => {
                self.skip(4)?;
                0
            }
            other => return Err(self.bad(format!("wire type {other} in field {number}"))),
        };
        Ok(Some((number, wire, len)))
    }
}

/// The inputs and outputs of the ONNX model at `path`, in graph order.
pub fn read_graph_io(path: &Path) -> Result<GraphIo> {
    let file = File::open(path).map_err(|cause| Error::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    let mut w = Walker {
        reader: BufReader::new(file),
        pos: 0,
        path: path.to_path_buf(),
    };
    let mut io = GraphIo::default();
    let mut found_graph = false;
    while let Some((number, wire, len)) = w.field(u64::MAX)? {
        if wire != 2 {
            continue;
        }
        if number != MODEL_GRAPH {
            w.skip(len)?;
            continue;
        }
        found_graph = true;
        let end = w.pos + len;
        while let Some((number, wire, len)) = w.field(end)? {
            if wire != 2 {
                continue;
            }
            if number != GRAPH_INPUT && number != GRAPH_OUTPUT {
                w.skip(len)?;
                continue;
            }
            if len > MAX_VALUE_INFO {
                return Err(w.bad(format!("a graph input or output of {len} bytes")));
            }
            let bytes = w.bytes(len)?;
            let info = ValueInfoProto::decode(bytes.as_slice())
                .map_err(|e| w.bad(format!("graph input or output: {e}")))?;
            let info = tensor_info(info);
            if number == GRAPH_INPUT {
                io.inputs.push(info);
            } else {
                io.outputs.push(info);
            }
        }
        if w.pos != end {
            return Err(w.bad("the graph's fields overrun its length"));
        }
    }
    if !found_graph {
        return Err(w.bad("no graph"));
    }
    Ok(io)
}

fn tensor_info(info: ValueInfoProto) -> TensorInfo {
    let mut out = TensorInfo {
        name: info.name.unwrap_or_default(),
        elem_type: 0,
        shape: Vec::new(),
    };
    if let Some(type_proto::Value::TensorType(t)) = info.r#type.and_then(|t| t.value) {
        out.elem_type = t.elem_type.unwrap_or(0);
        out.shape = t
            .shape
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(tensor_shape_proto::dimension::Value::DimValue(v)) if v > 0 => v,
                        _ => -1,
                    })
                    .collect()
            })
            .unwrap_or_default();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(model: &str, file: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(model)
            .join("onnx")
            .join(file)
    }

    #[test]
    fn reads_the_towers_of_the_fixtures() {
        let image = read_graph_io(&fixture("tiny-clip", "vision_model.onnx")).unwrap();
        assert_eq!(image.inputs.len(), 1);
        let pixels = image.input("pixel_values").unwrap();
        assert_eq!(pixels.datatype(), Some(DataType::Fp32));
        assert_eq!(pixels.shape, vec![-1, 3, 224, 224]);
        assert_eq!(image.output("image_embeds").unwrap().shape, vec![-1, 32]);

        let text = read_graph_io(&fixture("tiny-clip", "text_model.onnx")).unwrap();
        let ids = text.input("input_ids").unwrap();
        assert_eq!(ids.datatype(), Some(DataType::Int64));
        assert_eq!(ids.shape, vec![-1, 77]);
        assert!(text.input("attention_mask").is_some());

        let odd = read_graph_io(&fixture("tiny-clip-odd", "text_model.onnx")).unwrap();
        assert_eq!(odd.inputs.len(), 1, "{odd:?}");
        assert_eq!(odd.input("input_ids").unwrap().shape, vec![-1, -1]);
        assert_eq!(odd.output("text_embeds").unwrap().shape, vec![-1, 24]);
    }

    #[test]
    fn refuses_what_is_not_a_model() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.onnx");
        std::fs::write(&path, b"not a model at all").unwrap();
        let e = read_graph_io(&path).unwrap_err().to_string();
        assert!(e.contains("not an ONNX model"), "{e}");
        let e = read_graph_io(&dir.path().join("missing.onnx"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.onnx"), "{e}");
    }
}
