//! The runtime tensor: a shape, a logical dtype and values held as f32, i64
//! or bool (see [`DType::storage`]).

use super::dtype::{DType, Storage};
use crate::error::{Error, Result};

/// Values of a tensor, by storage class.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// Floating-point values (f16/bf16/f64 tensors are held as f32).
    F32(Vec<f32>),
    /// Integer values (every integer dtype is held as i64).
    I64(Vec<i64>),
    /// Booleans.
    Bool(Vec<bool>),
}

impl Data {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
            Data::Bool(v) => v.len(),
        }
    }
    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A dense row-major tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Data,
}

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Row-major strides of a shape.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl Tensor {
    /// A tensor from parts; the data length must match the shape and the
    /// storage class must match the dtype.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Data) -> Result<Tensor> {
        let ok_storage = matches!(
            (dtype.storage(), &data),
            (Storage::Float, Data::F32(_))
                | (Storage::Int, Data::I64(_))
                | (Storage::Bool, Data::Bool(_))
        );
        if !ok_storage {
            return Err(Error::Usage(format!(
                "internal: tensor of dtype {dtype} cannot hold {:?} storage",
                std::mem::discriminant(&data)
            )));
        }
        if numel(&shape) != data.len() {
            return Err(Error::Usage(format!(
                "internal: tensor shape {shape:?} needs {} values, got {}",
                numel(&shape),
                data.len()
            )));
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// An f32 tensor. Panics if the length does not match (caller bug).
    pub fn from_f32(shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        assert_eq!(
            numel(&shape),
            v.len(),
            "shape {shape:?} vs {} values",
            v.len()
        );
        Tensor {
            dtype: DType::F32,
            shape,
            data: Data::F32(v),
        }
    }

    /// An i64 tensor. Panics if the length does not match (caller bug).
    pub fn from_i64(shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        assert_eq!(
            numel(&shape),
            v.len(),
            "shape {shape:?} vs {} values",
            v.len()
        );
        Tensor {
            dtype: DType::I64,
            shape,
            data: Data::I64(v),
        }
    }

    /// A bool tensor. Panics if the length does not match (caller bug).
    pub fn from_bool(shape: Vec<usize>, v: Vec<bool>) -> Tensor {
        assert_eq!(
            numel(&shape),
            v.len(),
            "shape {shape:?} vs {} values",
            v.len()
        );
        Tensor {
            dtype: DType::Bool,
            shape,
            data: Data::Bool(v),
        }
    }

    /// An integer tensor of a given integer dtype (values held as i64).
    pub fn from_int(dtype: DType, shape: Vec<usize>, v: Vec<i64>) -> Tensor {
        assert_eq!(dtype.storage(), Storage::Int);
        assert_eq!(numel(&shape), v.len());
        Tensor {
            dtype,
            shape,
            data: Data::I64(v),
        }
    }

    /// A float tensor of a given float dtype (values held as f32).
    pub fn from_float(dtype: DType, shape: Vec<usize>, v: Vec<f32>) -> Tensor {
        assert_eq!(dtype.storage(), Storage::Float);
        assert_eq!(numel(&shape), v.len());
        Tensor {
            dtype,
            shape,
            data: Data::F32(v),
        }
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Tensor {
        let n = numel(&shape);
        let data = match dtype.storage() {
            Storage::Int => Data::I64(vec![0; n]),
            Storage::Bool => Data::Bool(vec![false; n]),
            _ => Data::F32(vec![0.0; n]),
        };
        Tensor { dtype, shape, data }
    }

    /// Logical element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Rank.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The values.
    pub fn data(&self) -> &Data {
        &self.data
    }
    /// Takes the values out.
    pub fn into_data(self) -> Data {
        self.data
    }

    /// f32 values, or an error naming `what` when this is not a float tensor.
    pub fn f32s(&self) -> Result<&[f32]> {
        match &self.data {
            Data::F32(v) => Ok(v),
            _ => Err(Error::Usage(format!(
                "expected a float tensor, got {}",
                self.dtype
            ))),
        }
    }
    /// Mutable f32 values.
    pub fn f32s_mut(&mut self) -> Result<&mut [f32]> {
        let dt = self.dtype;
        match &mut self.data {
            Data::F32(v) => Ok(v),
            _ => Err(Error::Usage(format!("expected a float tensor, got {dt}"))),
        }
    }
    /// i64 values (any integer dtype).
    pub fn i64s(&self) -> Result<&[i64]> {
        match &self.data {
            Data::I64(v) => Ok(v),
            _ => Err(Error::Usage(format!(
                "expected an integer tensor, got {}",
                self.dtype
            ))),
        }
    }
    /// Bool values.
    pub fn bools(&self) -> Result<&[bool]> {
        match &self.data {
            Data::Bool(v) => Ok(v),
            _ => Err(Error::Usage(format!(
                "expected a bool tensor, got {}",
                self.dtype
            ))),
        }
    }

    /// Values converted to f64 (for any storage).
    pub fn to_f64_vec(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// Values converted to i64 (floats truncate toward zero).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I64(v) => v.clone(),
            Data::Bool(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    /// Same values, new shape (element count must match).
    pub fn reshaped(mut self, shape: Vec<usize>) -> Result<Tensor> {
        if numel(&shape) != self.len() {
            return Err(Error::Usage(format!(
                "cannot reshape {:?} ({} values) to {:?}",
                self.shape,
                self.len(),
                shape
            )));
        }
        self.shape = shape;
        Ok(self)
    }

    /// Same values, new logical dtype of the same storage class.
    pub fn with_dtype(mut self, dtype: DType) -> Tensor {
        assert_eq!(dtype.storage(), self.dtype.storage());
        self.dtype = dtype;
        self
    }

    /// Scalar value as f64 (first element), if any.
    pub fn scalar_f64(&self) -> Option<f64> {
        match &self.data {
            Data::F32(v) => v.first().map(|&x| x as f64),
            Data::I64(v) => v.first().map(|&x| x as f64),
            Data::Bool(v) => v.first().map(|&x| x as u8 as f64),
        }
    }
}
