//! Element types, numbered as ONNX's `TensorProto.DataType`.

use serde::Serialize;

/// Element type of a tensor. The discriminants are ONNX's data type codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 8-bit unsigned int.
    U8,
    /// 8-bit signed int.
    I8,
    /// 16-bit unsigned int.
    U16,
    /// 16-bit signed int.
    I16,
    /// 32-bit signed int.
    I32,
    /// 64-bit signed int.
    I64,
    /// Strings (kept, never computed).
    String,
    /// Boolean.
    Bool,
    /// IEEE half.
    F16,
    /// 64-bit float.
    F64,
    /// 32-bit unsigned int.
    U32,
    /// 64-bit unsigned int.
    U64,
    /// bfloat16.
    BF16,
    /// Any other ONNX type code (complex, float8, int4...): kept, never computed.
    Other(i32),
}

/// How a tensor of a given dtype is held while computing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// f32 values (f16, bf16 and f64 are converted).
    Float,
    /// i64 values (every integer type).
    Int,
    /// booleans.
    Bool,
    /// not computable.
    None,
}

impl DType {
    /// From an ONNX `TensorProto.DataType` code.
    pub fn from_onnx(code: i32) -> DType {
        match code {
            1 => DType::F32,
            2 => DType::U8,
            3 => DType::I8,
            4 => DType::U16,
            5 => DType::I16,
            6 => DType::I32,
            7 => DType::I64,
            8 => DType::String,
            9 => DType::Bool,
            10 => DType::F16,
            11 => DType::F64,
            12 => DType::U32,
            13 => DType::U64,
            16 => DType::BF16,
            c => DType::Other(c),
        }
    }

    /// The ONNX `TensorProto.DataType` code.
    pub fn onnx_code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::U16 => 4,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::String => 8,
            DType::Bool => 9,
            DType::F16 => 10,
            DType::F64 => 11,
            DType::U32 => 12,
            DType::U64 => 13,
            DType::BF16 => 16,
            DType::Other(c) => c,
        }
    }

    /// Bytes per element in ONNX `raw_data` (None for strings and unknown types).
    pub fn size_of(self) -> Option<usize> {
        Some(match self {
            DType::U8 | DType::I8 | DType::Bool => 1,
            DType::U16 | DType::I16 | DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
            DType::String | DType::Other(_) => return None,
        })
    }

    /// How values of this type are held while computing.
    pub fn storage(self) -> Storage {
        match self {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Storage::Float,
            DType::U8
            | DType::I8
            | DType::U16
            | DType::I16
            | DType::I32
            | DType::I64
            | DType::U32
            | DType::U64 => Storage::Int,
            DType::Bool => Storage::Bool,
            DType::String | DType::Other(_) => Storage::None,
        }
    }

    /// True for floating-point types.
    pub fn is_float(self) -> bool {
        self.storage() == Storage::Float
    }

    /// Lower-case name (`f32`, `i64`, ...).
    pub fn name(self) -> String {
        match self {
            DType::Other(c) => format!("onnx-type-{c}"),
            d => format!("{d:?}").to_lowercase(),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}
