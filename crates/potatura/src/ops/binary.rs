//! Broadcasting binary arithmetic: Add, Sub, Mul, Div (float and integer).

use rayon::prelude::*;

use super::common::{broadcast_index_map, broadcast_shapes, fact, input, PAR_THRESHOLD};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{Data, Node, Tensor};

/// The arithmetic performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// a + b
    Add,
    /// a - b
    Sub,
    /// a * b
    Mul,
    /// a / b (integers truncate toward zero)
    Div,
}

/// A broadcasting binary op.
#[derive(Debug)]
pub struct Binary {
    /// Which one.
    pub kind: Kind,
}

/// Builds Add/Sub/Mul/Div.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    let kind = match node.op_type.as_str() {
        "Add" => Kind::Add,
        "Sub" => Kind::Sub,
        "Mul" => Kind::Mul,
        "Div" => Kind::Div,
        o => return Err(op_error(format!("binary::build called for {o}"))),
    };
    Ok(Box::new(Binary { kind }))
}

impl Binary {
    fn f(&self, a: f32, b: f32) -> f32 {
        match self.kind {
            Kind::Add => a + b,
            Kind::Sub => a - b,
            Kind::Mul => a * b,
            Kind::Div => a / b,
        }
    }
    fn i(&self, a: i64, b: i64) -> i64 {
        match self.kind {
            Kind::Add => a.wrapping_add(b),
            Kind::Sub => a.wrapping_sub(b),
            Kind::Mul => a.wrapping_mul(b),
            Kind::Div => {
                if b == 0 {
                    0
                } else {
                    a.wrapping_div(b)
                }
            }
        }
    }
}

/// Applies `f` element-wise with numpy broadcasting.
pub fn broadcast_zip<T: Copy + Send + Sync, U: Send>(
    a: &[T],
    ash: &[usize],
    b: &[T],
    bsh: &[usize],
    f: impl Fn(T, T) -> U + Sync + Send,
) -> Result<(Vec<usize>, Vec<U>)> {
    let out_shape = broadcast_shapes(&[ash, bsh])?;
    let n: usize = out_shape.iter().product();
    let out: Vec<U> = if ash == bsh {
        if n >= PAR_THRESHOLD {
            a.par_iter().zip(b.par_iter()).map(|(&x, &y)| f(x, y)).collect()
        } else {
            a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect()
        }
    } else if b.len() == 1 {
        let y = b[0];
        if n >= PAR_THRESHOLD {
            a.par_iter().map(|&x| f(x, y)).collect()
        } else {
            a.iter().map(|&x| f(x, y)).collect()
        }
    } else if a.len() == 1 {
        let x = a[0];
        if n >= PAR_THRESHOLD {
            b.par_iter().map(|&y| f(x, y)).collect()
        } else {
            b.iter().map(|&y| f(x, y)).collect()
        }
    } else {
        let ia = broadcast_index_map(ash, &out_shape);
        let ib = broadcast_index_map(bsh, &out_shape);
        if n >= PAR_THRESHOLD {
            ia.par_iter().zip(ib.par_iter()).map(|(&i, &j)| f(a[i], b[j])).collect()
        } else {
            ia.iter().zip(&ib).map(|(&i, &j)| f(a[i], b[j])).collect()
        }
    };
    Ok((out_shape, out))
}

impl Op for Binary {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let (a, b) = (fact(inputs, 0)?, fact(inputs, 1)?);
        if a.dtype != b.dtype {
            return Err(op_error(format!("input types differ: {} and {}", a.dtype, b.dtype)));
        }
        Ok(vec![Fact::new(a.dtype, broadcast_shapes(&[&a.shape, &b.shape])?)])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let (a, b) = (input(inputs, 0)?, input(inputs, 1)?);
        let out = match (a.data(), b.data()) {
            (Data::F32(x), Data::F32(y)) => {
                let (s, v) = broadcast_zip(x, a.shape(), y, b.shape(), |p, q| self.f(p, q))?;
                Tensor::from_float(a.dtype(), s, v)
            }
            (Data::I64(x), Data::I64(y)) => {
                let (s, v) = broadcast_zip(x, a.shape(), y, b.shape(), |p, q| self.i(p, q))?;
                Tensor::from_int(a.dtype(), s, v)
            }
            _ => return Err(op_error(format!("unsupported input types {} and {}", a.dtype(), b.dtype()))),
        };
        Ok(vec![out])
    }
}
