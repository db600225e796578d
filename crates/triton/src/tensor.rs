//! Named tensors as KServe v2 carries them: a data type, a shape and raw little-endian bytes
//! (`raw_input_contents` / `raw_output_contents`), and the wire formats of image batches.

use bytes::Bytes;
use half::f16;

use crate::error::{Error, Result};

/// A KServe v2 tensor data type (the ones clipfilter uses or may receive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DataType {
    Bool,
    Uint8,
    Int8,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
}

impl DataType {
    /// The protocol's name: "FP32", "UINT8", ...
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Int8 => "INT8",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
        }
    }

    /// Parses the protocol's name; `None` for a type this crate does not handle (BYTES, BF16, ...).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "BOOL" => DataType::Bool,
            "UINT8" => DataType::Uint8,
            "INT8" => DataType::Int8,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "FP16" => DataType::Fp16,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Fp16 => 2,
            DataType::Int32 | DataType::Fp32 => 4,
            DataType::Int64 | DataType::Fp64 => 8,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named tensor: data type, shape and row-major little-endian bytes whose length always
/// matches the shape (checked when it is made).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    name: String,
    datatype: DataType,
    shape: Vec<usize>,
    data: Bytes,
}

impl Tensor {
    /// A tensor from raw little-endian bytes; fails when their length does not fit the shape.
    pub fn new(
        name: impl Into<String>,
        datatype: DataType,
        shape: Vec<usize>,
        data: impl Into<Bytes>,
    ) -> Result<Self> {
        let name = name.into();
        let data = data.into();
        let expected = element_count(&shape)
            .and_then(|n| n.checked_mul(datatype.size()))
            .ok_or_else(|| Error::tensor(&name, format!("shape {shape:?} is too large")))?;
        if data.len() != expected {
            return Err(Error::tensor(
                &name,
                format!(
                    "{} bytes of {datatype} for shape {shape:?}, which needs {expected}",
                    data.len()
                ),
            ));
        }
        Ok(Tensor {
            name,
            datatype,
            shape,
            data,
        })
    }

    /// FP32 from values.
    pub fn from_f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Tensor::new(name, DataType::Fp32, shape, data)
    }

    /// FP16 from values.
    pub fn from_f16(name: impl Into<String>, shape: Vec<usize>, values: &[f16]) -> Result<Self> {
        let mut data = Vec::with_capacity(values.len() * 2);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Tensor::new(name, DataType::Fp16, shape, data)
    }

    /// FP16 from float32 values, rounded to the nearest half.
    pub fn f16_from_f32(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: &[f32],
    ) -> Result<Self> {
        let mut data = Vec::with_capacity(values.len() * 2);
        for v in values {
            data.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
        }
        Tensor::new(name, DataType::Fp16, shape, data)
    }

    /// UINT8 from bytes (taken without a copy when given a `Vec<u8>` or `Bytes`).
    pub fn from_u8(
        name: impl Into<String>,
        shape: Vec<usize>,
        values: impl Into<Bytes>,
    ) -> Result<Self> {
        Tensor::new(name, DataType::Uint8, shape, values)
    }

    /// INT64 from values (token ids, attention masks).
    pub fn from_i64(name: impl Into<String>, shape: Vec<usize>, values: &[i64]) -> Result<Self> {
        let mut data = Vec::with_capacity(values.len() * 8);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Tensor::new(name, DataType::Int64, shape, data)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn datatype(&self) -> DataType {
        self.datatype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The raw little-endian bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.datatype.size()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The values as float32 (FP32 as they are, FP16 widened exactly).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        match self.datatype {
            DataType::Fp32 => Ok(self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()),
            DataType::Fp16 => Ok(self
                .data
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect()),
            other => Err(Error::tensor(
                &self.name,
                format!("is {other}, not a floating-point tensor"),
            )),
        }
    }

    /// The values as int64 (INT64 only).
    pub fn to_i64(&self) -> Result<Vec<i64>> {
        match self.datatype {
            DataType::Int64 => Ok(self
                .data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect()),
            other => Err(Error::tensor(&self.name, format!("is {other}, not INT64"))),
        }
    }

    pub(crate) fn into_parts(self) -> (String, DataType, Vec<usize>, Bytes) {
        (self.name, self.datatype, self.shape, self.data)
    }
}

/// Product of the dimensions, `None` on overflow.
pub(crate) fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// How image batches travel to the server: what the engine sends as `pixel_values`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// Normalised float32 NCHW, what the ONNX image tower takes (4 bytes per value).
    Fp32,
    /// Normalised NCHW rounded to float16; the server's model casts to float32 (2 bytes).
    Fp16,
    /// RGB bytes NCHW before normalisation; the server's model applies CLIP's rescale, mean and std
    /// (folded into the ONNX graph by [`crate::fold`]) (1 byte).
    Uint8,
}

impl WireFormat {
    pub const ALL: [WireFormat; 3] = [WireFormat::Fp32, WireFormat::Fp16, WireFormat::Uint8];

    /// The tensor data type on the wire.
    pub fn datatype(self) -> DataType {
        match self {
            WireFormat::Fp32 => DataType::Fp32,
            WireFormat::Fp16 => DataType::Fp16,
            WireFormat::Uint8 => DataType::Uint8,
        }
    }

    /// Bytes of one `[3, height, width]` sample.
    pub fn bytes_per_sample(self, height: usize, width: usize) -> usize {
        3 * height * width * self.datatype().size()
    }

    /// The name used in configuration and reports: "fp32", "fp16", "uint8".
    pub fn as_str(self) -> &'static str {
        match self {
            WireFormat::Fp32 => "fp32",
            WireFormat::Fp16 => "fp16",
            WireFormat::Uint8 => "uint8",
        }
    }

    /// Parses "fp32", "fp16" or "uint8".
    pub fn parse(name: &str) -> Option<Self> {
        WireFormat::ALL.into_iter().find(|w| w.as_str() == name)
    }
}

impl std::fmt::Display for WireFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked() {
        assert!(Tensor::from_f32("x", vec![2, 3], &[0.0; 6]).is_ok());
        let err = Tensor::from_f32("x", vec![2, 3], &[0.0; 5]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "tensor 'x': 20 bytes of FP32 for shape [2, 3], which needs 24"
        );
        assert!(Tensor::new("x", DataType::Uint8, vec![usize::MAX, 2], vec![]).is_err());
    }

    #[test]
    fn round_trips() {
        let t = Tensor::from_f32("a", vec![3], &[1.5, -2.0, 0.1]).unwrap();
        assert_eq!(t.to_f32().unwrap(), vec![1.5, -2.0, 0.1]);
        let h = Tensor::f16_from_f32("h", vec![2], &[0.5, 1.0 / 3.0]).unwrap();
        assert_eq!(h.data().len(), 4);
        assert_eq!(
            h.to_f32().unwrap(),
            vec![0.5, f16::from_f32(1.0 / 3.0).to_f32()]
        );
        let i = Tensor::from_i64("i", vec![1, 2], &[49406, -1]).unwrap();
        assert_eq!(i.to_i64().unwrap(), vec![49406, -1]);
        assert!(i.to_f32().is_err());
    }

    #[test]
    fn wire_formats() {
        assert_eq!(WireFormat::Fp32.bytes_per_sample(224, 224), 602_112);
        assert_eq!(WireFormat::Fp16.bytes_per_sample(224, 224), 301_056);
        assert_eq!(WireFormat::Uint8.bytes_per_sample(224, 224), 150_528);
        for w in WireFormat::ALL {
            assert_eq!(WireFormat::parse(w.as_str()), Some(w));
            assert_eq!(DataType::parse(w.datatype().as_str()), Some(w.datatype()));
        }
    }
}
