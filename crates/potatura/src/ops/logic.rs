//! Selection and type conversion: Where, Cast.

use rayon::prelude::*;

use super::binary::broadcast_zip3;
use super::channels::{ChanCx, ChanMap};
use super::common::{broadcast_shapes, fact, input, PAR_THRESHOLD};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{DType, Data, Node, Storage, Tensor};

/// Which op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `Where(condition, X, Y)`: X where the condition holds, else Y, with
    /// numpy broadcasting of all three.
    Where,
    /// `Cast`: converts to another element type.
    Cast {
        /// Target type.
        to: DType,
    },
    /// `Not`: logical negation of a Bool tensor.
    Not,
}

/// A Where or Cast op.
#[derive(Debug)]
pub struct Logic {
    /// Which one, with its parameters.
    pub kind: Kind,
}

/// Builds Where and Cast.
pub fn build(node: &Node, _opset: i64) -> Result<Box<dyn Op>> {
    let kind = match node.op_type.as_str() {
        "Where" => Kind::Where,
        "Not" => Kind::Not,
        "Cast" => {
            if node.attr("to").is_none() {
                return Err(op_error("Cast needs the attribute 'to'"));
            }
            let code = node.attr_int("to", 0)?;
            let code = i32::try_from(code)
                .map_err(|_| op_error(format!("Cast: invalid type code {code}")))?;
            let to = DType::from_onnx(code);
            if to.storage() == Storage::None {
                return Err(op_error(format!("Cast to {to} is not supported")));
            }
            Kind::Cast { to }
        }
        o => return Err(op_error(format!("logic::build called for {o}"))),
    };
    Ok(Box::new(Logic { kind }))
}

/// Wraps an integer to the width of an integer `dtype`, as a C cast does
/// (`300` to `u8` is `44`, `128` to `i8` is `-128`). `i64`, `u64` (held as
/// its bit pattern) and non-integer types are returned unchanged.
#[inline]
pub fn wrap_int(dtype: DType, v: i64) -> i64 {
    match dtype {
        DType::I8 => v as i8 as i64,
        DType::U8 => v as u8 as i64,
        DType::I16 => v as i16 as i64,
        DType::U16 => v as u16 as i64,
        DType::I32 => v as i32 as i64,
        DType::U32 => v as u32 as i64,
        _ => v,
    }
}

/// Converts a float to an integer `dtype`: truncates toward zero and
/// saturates to the type's range (NaN gives 0). `u64` is returned as its
/// bit pattern.
#[inline]
pub fn float_to_int(dtype: DType, x: f32) -> i64 {
    match dtype {
        DType::I8 => x as i8 as i64,
        DType::U8 => x as u8 as i64,
        DType::I16 => x as i16 as i64,
        DType::U16 => x as u16 as i64,
        DType::I32 => x as i32 as i64,
        DType::U32 => x as u32 as i64,
        DType::U64 => x as u64 as i64,
        _ => x as i64,
    }
}

/// Rounds an f32 to the precision of a float `dtype` (f16, bf16: nearest
/// even, overflow to infinity); f32 and f64 values are unchanged.
#[inline]
pub fn round_to_float(dtype: DType, x: f32) -> f32 {
    match dtype {
        DType::F16 => half::f16::from_f32(x).to_f32(),
        DType::BF16 => half::bf16::from_f32(x).to_f32(),
        _ => x,
    }
}

/// Maps a slice, in parallel when large.
fn pmap<T: Copy + Sync, U: Send>(x: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U> {
    if x.len() >= PAR_THRESHOLD {
        x.par_iter().map(|&a| f(a)).collect()
    } else {
        x.iter().map(|&a| f(a)).collect()
    }
}

/// Converts `x` to `to` (see [`Kind::Cast`]): float to int truncates and
/// saturates, int to narrower int wraps, anything to bool is "nonzero",
/// bool is 0/1, f16/bf16 targets round to their precision.
pub fn cast(x: &Tensor, to: DType) -> Result<Tensor> {
    let from = x.dtype();
    if from.storage() == Storage::None || to.storage() == Storage::None {
        return Err(op_error(format!(
            "Cast from {from} to {to} is not supported"
        )));
    }
    if from == to {
        return Ok(x.clone());
    }
    let shape = x.shape().to_vec();
    let data = match (x.data(), to.storage()) {
        (Data::F32(v), Storage::Float) => {
            if matches!(to, DType::F16 | DType::BF16) {
                Data::F32(pmap(v, |a| round_to_float(to, a)))
            } else {
                Data::F32(v.clone())
            }
        }
        (Data::F32(v), Storage::Int) => Data::I64(pmap(v, |a| float_to_int(to, a))),
        (Data::F32(v), _) => Data::Bool(pmap(v, |a| a != 0.0)),
        (Data::I64(v), Storage::Float) => {
            let unsigned = from == DType::U64;
            Data::F32(pmap(v, |a| {
                round_to_float(to, if unsigned { a as u64 as f32 } else { a as f32 })
            }))
        }
        (Data::I64(v), Storage::Int) => Data::I64(pmap(v, |a| wrap_int(to, a))),
        (Data::I64(v), _) => Data::Bool(pmap(v, |a| a != 0)),
        (Data::Bool(v), Storage::Float) => Data::F32(pmap(v, |a| a as u8 as f32)),
        (Data::Bool(v), Storage::Int) => Data::I64(pmap(v, |a| a as i64)),
        (Data::Bool(v), _) => Data::Bool(v.clone()),
    };
    Tensor::new(to, shape, data)
}

impl Logic {
    fn where_types(c: DType, x: DType, y: DType) -> Result<()> {
        if c != DType::Bool {
            return Err(op_error(format!("Where condition must be bool, got {c}")));
        }
        if x != y {
            return Err(op_error(format!(
                "Where branches have different types: {x} and {y}"
            )));
        }
        if x.storage() == Storage::None {
            return Err(op_error(format!("Where does not support type {x}")));
        }
        Ok(())
    }

    fn eval_where(c: &Tensor, x: &Tensor, y: &Tensor) -> Result<Tensor> {
        Self::where_types(c.dtype(), x.dtype(), y.dtype())?;
        let cv = c.bools()?;
        let (cs, xs, ys) = (c.shape(), x.shape(), y.shape());
        let (shape, data) = match (x.data(), y.data()) {
            (Data::F32(a), Data::F32(b)) => {
                let (s, v) = broadcast_zip3(cv, cs, a, xs, b, ys, |k, p, q| if k { p } else { q })?;
                (s, Data::F32(v))
            }
            (Data::I64(a), Data::I64(b)) => {
                let (s, v) = broadcast_zip3(cv, cs, a, xs, b, ys, |k, p, q| if k { p } else { q })?;
                (s, Data::I64(v))
            }
            (Data::Bool(a), Data::Bool(b)) => {
                let (s, v) = broadcast_zip3(cv, cs, a, xs, b, ys, |k, p, q| if k { p } else { q })?;
                (s, Data::Bool(v))
            }
            _ => {
                return Err(op_error(format!(
                    "Where branches have different types: {} and {}",
                    x.dtype(),
                    y.dtype()
                )))
            }
        };
        Tensor::new(x.dtype(), shape, data)
    }
}

impl Op for Logic {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        match self.kind {
            Kind::Where => cx.elementwise(1),
            _ => Some(cx.passthrough()),
        }
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        match self.kind {
            Kind::Where => {
                let (c, x, y) = (fact(inputs, 0)?, fact(inputs, 1)?, fact(inputs, 2)?);
                Self::where_types(c.dtype, x.dtype, y.dtype)?;
                Ok(vec![Fact::new(
                    x.dtype,
                    broadcast_shapes(&[&c.shape, &x.shape, &y.shape])?,
                )])
            }
            Kind::Cast { to } => {
                let x = fact(inputs, 0)?;
                if x.dtype.storage() == Storage::None {
                    return Err(op_error(format!(
                        "Cast from {} to {to} is not supported",
                        x.dtype
                    )));
                }
                Ok(vec![Fact::new(to, x.shape.clone())])
            }
            Kind::Not => {
                let x = fact(inputs, 0)?;
                if x.dtype != DType::Bool {
                    return Err(op_error(format!(
                        "Not takes a bool tensor, got {}",
                        x.dtype
                    )));
                }
                Ok(vec![Fact::new(DType::Bool, x.shape.clone())])
            }
        }
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let out = match self.kind {
            Kind::Where => {
                Self::eval_where(input(inputs, 0)?, input(inputs, 1)?, input(inputs, 2)?)?
            }
            Kind::Cast { to } => cast(input(inputs, 0)?, to)?,
            Kind::Not => {
                let x = input(inputs, 0)?;
                let v = x
                    .bools()
                    .map_err(|_| op_error(format!("Not takes a bool tensor, got {}", x.dtype())))?;
                Tensor::from_bool(x.shape().to_vec(), v.iter().map(|b| !b).collect())
            }
        };
        Ok(vec![out])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};

    fn cast_op(code: i64) -> Result<Box<dyn Op>> {
        build(
            &Node::new(
                "n",
                "Cast",
                &["x"],
                &["y"],
                vec![Attribute::new("to", AttrValue::Int(code))],
            ),
            19,
        )
    }

    fn run_cast(x: &Tensor, code: i64) -> Tensor {
        cast_op(code).unwrap().eval(&[Some(x)]).unwrap().remove(0)
    }

    fn where_op() -> Box<dyn Op> {
        build(
            &Node::new("n", "Where", &["c", "x", "y"], &["z"], vec![]),
            16,
        )
        .unwrap()
    }

    fn f(v: &[f32]) -> Tensor {
        Tensor::from_f32(vec![v.len()], v.to_vec())
    }

    #[test]
    fn not_negates_bools_and_refuses_floats() {
        let op = build(&Node::new("n", "Not", &["x"], &["y"], vec![]), 17).unwrap();
        let x = Tensor::from_bool(vec![3], vec![true, false, true]);
        assert_eq!(
            op.eval(&[Some(&x)]).unwrap()[0].bools().unwrap(),
            &[false, true, false]
        );
        let f = Tensor::from_f32(vec![1], vec![1.0]);
        assert!(op.eval(&[Some(&f)]).is_err());
    }

    #[test]
    fn where_broadcasts_all_types() {
        let c = Tensor::from_bool(vec![2, 1], vec![true, false]);
        let x = Tensor::from_f32(vec![1, 3], vec![1.0, 2.0, 3.0]);
        let y = Tensor::from_f32(vec![], vec![-1.0]);
        let r = where_op()
            .eval(&[Some(&c), Some(&x), Some(&y)])
            .unwrap()
            .remove(0);
        assert_eq!(
            r,
            Tensor::from_f32(vec![2, 3], vec![1.0, 2.0, 3.0, -1.0, -1.0, -1.0])
        );
        let xi = Tensor::from_int(DType::I32, vec![3], vec![1, 2, 3]);
        let yi = Tensor::from_int(DType::I32, vec![2, 1], vec![10, 20]);
        let c3 = Tensor::from_bool(vec![3], vec![true, false, true]);
        let r = where_op()
            .eval(&[Some(&c3), Some(&xi), Some(&yi)])
            .unwrap()
            .remove(0);
        assert_eq!(r.dtype(), DType::I32);
        assert_eq!(r.shape(), &[2, 3]);
        assert_eq!(r.i64s().unwrap(), &[1, 10, 3, 1, 20, 3]);
        let xb = Tensor::from_bool(vec![], vec![true]);
        let yb = Tensor::from_bool(vec![3], vec![false, true, false]);
        let r = where_op()
            .eval(&[Some(&c3), Some(&xb), Some(&yb)])
            .unwrap()
            .remove(0);
        assert_eq!(r, Tensor::from_bool(vec![3], vec![true, true, true]));
        // Facts.
        let fc = Fact::new(DType::Bool, vec![2, 1, 4]);
        let fx = Fact::new(DType::F32, vec![3, 1]);
        let fy = Fact::new(DType::F32, vec![]);
        let o = where_op()
            .infer(&[Some(&fc), Some(&fx), Some(&fy)])
            .unwrap();
        assert_eq!(
            (o[0].dtype, o[0].shape.clone()),
            (DType::F32, vec![2, 3, 4])
        );
        // Errors.
        let cf = Tensor::from_f32(vec![1], vec![1.0]);
        assert!(where_op().eval(&[Some(&cf), Some(&x), Some(&y)]).is_err());
        assert!(where_op().eval(&[Some(&c), Some(&x), Some(&xi)]).is_err());
        let x4 = Tensor::from_f32(vec![4], vec![0.0; 4]);
        assert!(where_op().eval(&[Some(&c3), Some(&x4), Some(&y)]).is_err());
        assert!(where_op().eval(&[Some(&c3), Some(&x4)]).is_err());
        let fi = Fact::new(DType::I64, vec![]);
        assert!(where_op()
            .infer(&[Some(&fc), Some(&fx), Some(&fi)])
            .is_err());
        assert!(where_op()
            .infer(&[Some(&fx), Some(&fx), Some(&fx)])
            .is_err());
    }

    #[test]
    fn where_large_mask() {
        // Attention-style mask [B,1,1,S] selecting between scores and a scalar.
        let (b, h, s) = (2, 4, 96);
        let c = Tensor::from_bool(vec![b, 1, 1, s], (0..b * s).map(|k| k % 5 != 0).collect());
        let x = Tensor::from_f32(
            vec![b, h, s, s],
            (0..b * h * s * s).map(|k| k as f32).collect(),
        );
        let y = Tensor::from_f32(vec![], vec![f32::NEG_INFINITY]);
        let r = where_op()
            .eval(&[Some(&c), Some(&x), Some(&y)])
            .unwrap()
            .remove(0);
        let rv = r.f32s().unwrap();
        for (k, &v) in rv.iter().enumerate() {
            let (bi, si) = (k / (h * s * s), k % s);
            let want = if (bi * s + si) % 5 != 0 {
                k as f32
            } else {
                f32::NEG_INFINITY
            };
            assert_eq!(v, want, "element {k}");
        }
    }

    #[test]
    fn cast_float_to_int_truncates_and_saturates() {
        let x = f(&[2.7, -2.7, 0.5, -0.5, 3e9, -1e20, f32::NAN, 300.0, -5.0]);
        let r = run_cast(&x, 6); // int32
        assert_eq!(r.dtype(), DType::I32);
        assert_eq!(
            r.i64s().unwrap(),
            &[2, -2, 0, 0, i32::MAX as i64, i32::MIN as i64, 0, 300, -5]
        );
        let r = run_cast(&x, 7); // int64
        assert_eq!(
            r.i64s().unwrap(),
            &[2, -2, 0, 0, 3_000_000_000, i64::MIN, 0, 300, -5]
        );
        let r = run_cast(&x, 2); // uint8
        assert_eq!(r.i64s().unwrap(), &[2, 0, 0, 0, 255, 0, 0, 255, 0]);
        let r = run_cast(&x, 3); // int8
        assert_eq!(r.i64s().unwrap(), &[2, -2, 0, 0, 127, -128, 0, 127, -5]);
        let r = run_cast(&f(&[70000.0, -1.0]), 4); // uint16
        assert_eq!(r.i64s().unwrap(), &[65535, 0]);
        let r = run_cast(&f(&[5e9, -1.0]), 12); // uint32
        assert_eq!(r.i64s().unwrap(), &[u32::MAX as i64, 0]);
    }

    #[test]
    fn cast_int_to_int_wraps() {
        let x = Tensor::from_i64(vec![5], vec![300, 128, -1, -129, 1 << 40]);
        assert_eq!(run_cast(&x, 2).i64s().unwrap(), &[44, 128, 255, 127, 0]); // uint8
        assert_eq!(run_cast(&x, 3).i64s().unwrap(), &[44, -128, -1, 127, 0]); // int8
        assert_eq!(run_cast(&x, 5).i64s().unwrap(), &[300, 128, -1, -129, 0]); // int16
        assert_eq!(
            run_cast(&x, 4).i64s().unwrap(),
            &[300, 128, 65535, 65407, 0]
        ); // uint16
        assert_eq!(run_cast(&x, 6).i64s().unwrap(), &[300, 128, -1, -129, 0]); // int32
        assert_eq!(
            run_cast(&x, 12).i64s().unwrap(),
            &[300, 128, u32::MAX as i64, 4294967167, 0]
        ); // uint32
           // u64 is held as its bit pattern; it converts to float unsigned.
        let u = run_cast(&x, 13);
        assert_eq!((u.dtype(), u.i64s().unwrap()[2]), (DType::U64, -1));
        let back = run_cast(&u, 1);
        assert_eq!(back.f32s().unwrap()[2], 18446744073709551615u64 as f32);
        let i32s = Tensor::from_int(DType::I32, vec![2], vec![-7, 9]);
        assert_eq!(run_cast(&i32s, 7), Tensor::from_i64(vec![2], vec![-7, 9]));
        assert_eq!(run_cast(&i32s, 1), f(&[-7.0, 9.0]));
        let r = run_cast(&Tensor::from_i64(vec![2], vec![2049, 16_777_217]), 10);
        assert_eq!(
            (r.dtype(), r.f32s().unwrap()),
            (DType::F16, &[2048.0, f32::INFINITY][..])
        );
    }

    #[test]
    fn cast_bool_and_floats() {
        let x = f(&[0.0, -0.0, f32::NAN, 2.0, -1e-30]);
        assert_eq!(
            run_cast(&x, 9),
            Tensor::from_bool(vec![5], vec![false, false, true, true, true])
        );
        let xi = Tensor::from_i64(vec![3], vec![0, -3, 1]);
        assert_eq!(
            run_cast(&xi, 9),
            Tensor::from_bool(vec![3], vec![false, true, true])
        );
        let b = Tensor::from_bool(vec![2], vec![true, false]);
        assert_eq!(run_cast(&b, 1), f(&[1.0, 0.0]));
        assert_eq!(run_cast(&b, 7), Tensor::from_i64(vec![2], vec![1, 0]));
        let r = run_cast(&b, 10);
        assert_eq!(
            (r.dtype(), r.f32s().unwrap()),
            (DType::F16, &[1.0, 0.0][..])
        );
        assert_eq!(run_cast(&b, 9), b);
        // f16: round to nearest even, overflow to infinity.
        let r = run_cast(&f(&[0.1, 65519.0, 65520.0, 1e-8, 3.3, -2.5e-5]), 10);
        assert_eq!(r.dtype(), DType::F16);
        assert_eq!(
            r.f32s().unwrap(),
            &[
                0.099_975_586,
                65504.0,
                f32::INFINITY,
                0.0,
                3.300_781_2,
                -2.497_434_6e-5
            ]
        );
        // bf16.
        let r = run_cast(&f(&[0.1, 3.3, 1.003_906_3, 1.011_718_8, 3.4e38]), 16);
        assert_eq!(r.dtype(), DType::BF16);
        assert_eq!(
            r.f32s().unwrap(),
            &[0.100_097_656, 3.296875, 1.0, 1.015625, f32::INFINITY]
        );
        let r = run_cast(&f(&[0.1]), 11);
        assert_eq!((r.dtype(), r.f32s().unwrap()), (DType::F64, &[0.1f32][..]));
        let h = r.clone().with_dtype(DType::F16);
        assert_eq!(run_cast(&h, 1).dtype(), DType::F32);
        // Same type: a copy.
        assert_eq!(run_cast(&x, 1).f32s().unwrap().len(), 5);
    }

    #[test]
    fn cast_errors_and_facts() {
        assert!(cast_op(8).is_err()); // string
        assert!(cast_op(14).is_err()); // complex64
        assert!(cast_op(1 << 40).is_err());
        assert!(build(&Node::new("n", "Cast", &["x"], &["y"], vec![]), 13).is_err());
        let op = cast_op(6).unwrap();
        assert!(op.eval(&[None]).is_err());
        let o = op
            .infer(&[Some(&Fact::new(DType::F32, vec![2, 3]))])
            .unwrap();
        assert_eq!((o[0].dtype, o[0].shape.clone()), (DType::I32, vec![2, 3]));
        assert!(op
            .infer(&[Some(&Fact::new(DType::String, vec![2]))])
            .is_err());
        assert!(build(&Node::new("n", "CastLike", &["x", "y"], &["z"], vec![]), 19).is_err());
        // Large: parallel path.
        let n = 2 * PAR_THRESHOLD + 3;
        let x = Tensor::from_f32(vec![n], (0..n).map(|k| k as f32 - 100.5).collect());
        let r = run_cast(&x, 7);
        assert!(r
            .i64s()
            .unwrap()
            .iter()
            .enumerate()
            .all(|(k, &v)| v == (k as f32 - 100.5) as i64));
    }
}
