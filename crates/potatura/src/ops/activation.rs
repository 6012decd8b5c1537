//! Element-wise unary ops: Relu, LeakyRelu, Sigmoid, HardSigmoid,
//! HardSwish, Tanh, Erf, Gelu, Clip, Sqrt, Exp, Log, Neg, Abs.
//!
//! Transcendental functions use branch-free f32 approximations
//! ([`exp_f32`], [`tanh_f32`], [`erf_f32`]...) that the compiler can
//! vectorise, accurate to a few ulps (erf: < 3e-7 absolute).

use rayon::prelude::*;

use super::common::{fact, input, opt, PAR_THRESHOLD};
use super::logic::wrap_int;
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{DType, Data, Node, Storage, Tensor};

/// Which activation, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// max(x, 0) (float and integer)
    Relu,
    /// x if x >= 0 else alpha * x
    LeakyRelu {
        /// Slope for negative inputs (default 0.01).
        alpha: f32,
    },
    /// 1 / (1 + exp(-x))
    Sigmoid,
    /// max(0, min(1, alpha * x + beta))
    HardSigmoid {
        /// Default 0.2.
        alpha: f32,
        /// Default 0.5.
        beta: f32,
    },
    /// x * max(0, min(1, x / 6 + 0.5))
    HardSwish,
    /// tanh(x)
    Tanh,
    /// The error function.
    Erf,
    /// x * Phi(x) (exact, with erf) or its tanh approximation.
    Gelu {
        /// `approximate = "tanh"`.
        tanh: bool,
    },
    /// min(max(x, min), max). The bounds are attributes before opset 11,
    /// optional scalar inputs from opset 11 (these fields then hold the
    /// defaults: the lowest and highest finite values).
    Clip {
        /// Lower bound (attribute form).
        min: f32,
        /// Upper bound (attribute form).
        max: f32,
        /// True from opset 11: bounds come from inputs 1 and 2.
        from_inputs: bool,
    },
    /// Square root.
    Sqrt,
    /// e^x.
    Exp,
    /// Natural logarithm.
    Log,
    /// -x (float and integer)
    Neg,
    /// |x| (float and integer)
    Abs,
}

/// An element-wise activation.
#[derive(Debug)]
pub struct Activation {
    /// Which one, with its parameters.
    pub kind: Kind,
}

/// Builds the activation ops.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    let kind = match node.op_type.as_str() {
        "Relu" => Kind::Relu,
        "LeakyRelu" => Kind::LeakyRelu { alpha: node.attr_float("alpha", 0.01)? },
        "Sigmoid" => Kind::Sigmoid,
        "HardSigmoid" => Kind::HardSigmoid { alpha: node.attr_float("alpha", 0.2)?, beta: node.attr_float("beta", 0.5)? },
        "HardSwish" => Kind::HardSwish,
        "Tanh" => Kind::Tanh,
        "Erf" => Kind::Erf,
        "Gelu" => match node.attr_string("approximate", "none")?.as_str() {
            "none" => Kind::Gelu { tanh: false },
            "tanh" => Kind::Gelu { tanh: true },
            o => return Err(op_error(format!("Gelu: unknown approximate '{o}' (expected 'none' or 'tanh')"))),
        },
        "Clip" => {
            if opset < 11 {
                Kind::Clip { min: node.attr_float("min", f32::MIN)?, max: node.attr_float("max", f32::MAX)?, from_inputs: false }
            } else {
                Kind::Clip { min: f32::MIN, max: f32::MAX, from_inputs: true }
            }
        }
        "Sqrt" => Kind::Sqrt,
        "Exp" => Kind::Exp,
        "Log" => Kind::Log,
        "Neg" => Kind::Neg,
        "Abs" => Kind::Abs,
        o => return Err(op_error(format!("activation::build called for {o}"))),
    };
    Ok(Box::new(Activation { kind }))
}

// ---------------------------------------------------------------------------
// Vectorisable f32 math
// ---------------------------------------------------------------------------

/// Clamps to `[lo, hi]`, keeping NaN (which `f32::clamp` also does, but
/// this form also accepts `lo > hi`, giving `hi`, as ONNX Clip requires).
#[inline(always)]
pub fn clamp_nan(x: f32, lo: f32, hi: f32) -> f32 {
    let y = if x < lo { lo } else { x };
    if y > hi {
        hi
    } else {
        y
    }
}

/// e^x in f32, about 1 ulp (Cephes polynomial, exact power-of-two scaling,
/// overflow to inf, underflow through subnormals to 0, NaN kept). Branch
/// free so that loops over it vectorise.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = if x < -104.0 {
        -104.0
    } else if x > 89.0 {
        89.0
    } else {
        x
    };
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1) * r
        + 5.000_000_1e-1;
    let e = p * (r * r) + r + 1.0;
    // 2^n as two factors so that n in [-150, 128] never leaves the range.
    let h = ni >> 1;
    let s1 = f32::from_bits((h.wrapping_add(127) as u32).wrapping_shl(23));
    let s2 = f32::from_bits((ni.wrapping_sub(h).wrapping_add(127) as u32).wrapping_shl(23));
    e * s1 * s2
}

/// Logistic sigmoid 1 / (1 + e^-x).
#[inline(always)]
pub fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

/// tanh in f32 (Cephes: odd polynomial below 0.625, else via e^2x).
#[inline(always)]
pub fn tanh_f32(x: f32) -> f32 {
    let ax = x.abs();
    let s = x * x;
    let small = ((((-5.704_988_7e-3 * s + 2.063_908_9e-2) * s - 5.373_971_6e-2) * s + 1.333_144_2e-1) * s - 3.333_328_2e-1)
        * s
        * x
        + x;
    let e = exp_f32(2.0 * ax);
    let big = (1.0 - 2.0 / (e + 1.0)).copysign(x);
    if ax < 0.625 {
        small
    } else {
        big
    }
}

/// erf on |x| < 0.5: its Taylor series to x^13 (error < 1e-9),
/// `2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))`.
#[inline(always)]
fn erf_small(x: f32) -> f32 {
    let s = x * x;
    let p = (((((1.205_533_3e-4 * s - 8.548_327e-4) * s + 5.223_978e-3) * s - 2.686_617_2e-2) * s + 1.128_379_2e-1) * s
        - 3.761_263_8e-1)
        * s
        + 1.128_379_2;
    x * p
}

/// erfc for z >= 0 (Numerical Recipes `erfcc`, relative error 1.2e-7 in
/// exact arithmetic, about 1e-5 in f32 for large z where it is tiny).
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    t * exp_f32(-z * z + p)
}

/// The error function in f32, absolute error below 3e-7.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let ax = x.abs();
    let big = (1.0 - erfc_pos(ax)).copysign(x);
    let small = erf_small(x);
    if ax < 0.5 {
        small
    } else {
        big
    }
}

/// 1 + erf(z), accurate also where it is tiny (z very negative).
#[inline(always)]
fn one_plus_erf(z: f32) -> f32 {
    let c = erfc_pos(z.abs());
    let small = 1.0 + erf_small(z);
    if z.abs() < 0.5 {
        small
    } else if z > 0.0 {
        2.0 - c
    } else {
        c
    }
}

/// GELU, exact form: x * (1 + erf(x / sqrt 2)) / 2.
#[inline(always)]
pub fn gelu_f32(x: f32) -> f32 {
    0.5 * x * one_plus_erf(x * std::f32::consts::FRAC_1_SQRT_2)
}

/// GELU, tanh form: x * (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2,
/// computed as x * sigmoid(2 u) (the same value, without cancellation).
#[inline(always)]
pub fn gelu_tanh_f32(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // sqrt(2/pi)
    let u = K * (x + 0.044_715 * x * x * x);
    x * sigmoid_f32(2.0 * u)
}

// ---------------------------------------------------------------------------
// Maps
// ---------------------------------------------------------------------------

/// Elements per parallel task.
const CHUNK: usize = 1 << 13;

/// Maps a float tensor element-wise (in parallel for large tensors).
pub fn map_f32(t: &Tensor, f: impl Fn(f32) -> f32 + Sync + Send) -> Result<Tensor> {
    let x = t.f32s()?;
    let mut v = vec![0.0f32; x.len()];
    let body = |o: &mut [f32], i: &[f32]| {
        for (o, &a) in o.iter_mut().zip(i) {
            *o = f(a);
        }
    };
    if x.len() >= PAR_THRESHOLD {
        v.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, i)| body(o, i));
    } else {
        body(&mut v, x);
    }
    Ok(Tensor::from_float(t.dtype(), t.shape().to_vec(), v))
}

/// Maps an integer tensor element-wise; results wrap to the dtype's width.
pub fn map_int(t: &Tensor, f: impl Fn(i64) -> i64 + Sync + Send) -> Result<Tensor> {
    let x = t.i64s()?;
    let dt = t.dtype();
    let g = |a: i64| wrap_int(dt, f(a));
    let v: Vec<i64> =
        if x.len() >= PAR_THRESHOLD { x.par_iter().map(|&a| g(a)).collect() } else { x.iter().map(|&a| g(a)).collect() };
    Ok(Tensor::from_int(dt, t.shape().to_vec(), v))
}

impl Activation {
    fn supports_int(&self) -> bool {
        matches!(self.kind, Kind::Relu | Kind::Neg | Kind::Abs | Kind::Clip { .. })
    }

    fn check_type(&self, dt: DType) -> Result<()> {
        match dt.storage() {
            Storage::Float => Ok(()),
            Storage::Int if self.supports_int() => Ok(()),
            _ => Err(op_error(format!("{} does not support input type {dt}", self.name()))),
        }
    }

    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Relu => "Relu",
            Kind::LeakyRelu { .. } => "LeakyRelu",
            Kind::Sigmoid => "Sigmoid",
            Kind::HardSigmoid { .. } => "HardSigmoid",
            Kind::HardSwish => "HardSwish",
            Kind::Tanh => "Tanh",
            Kind::Erf => "Erf",
            Kind::Gelu { .. } => "Gelu",
            Kind::Clip { .. } => "Clip",
            Kind::Sqrt => "Sqrt",
            Kind::Exp => "Exp",
            Kind::Log => "Log",
            Kind::Neg => "Neg",
            Kind::Abs => "Abs",
        }
    }

    /// Reads a Clip bound from input `i` (a one-element tensor of the
    /// input's type), if given.
    fn clip_bound(inputs: &[Option<&Tensor>], i: usize, dt: DType) -> Result<Option<&Tensor>> {
        let Some(t) = opt(inputs, i) else { return Ok(None) };
        let which = if i == 1 { "min" } else { "max" };
        if t.len() != 1 {
            return Err(op_error(format!("Clip {which} must be a scalar, got shape {:?}", t.shape())));
        }
        if t.dtype() != dt {
            return Err(op_error(format!("Clip {which} has type {} but the input is {dt}", t.dtype())));
        }
        Ok(Some(t))
    }

    fn eval_float(&self, x: &Tensor, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
        match self.kind {
            Kind::Relu => map_f32(x, |a| if a < 0.0 { 0.0 } else { a }),
            Kind::LeakyRelu { alpha } => map_f32(x, |a| if a < 0.0 { a * alpha } else { a }),
            Kind::Sigmoid => map_f32(x, sigmoid_f32),
            Kind::HardSigmoid { alpha, beta } => map_f32(x, |a| clamp_nan(alpha * a + beta, 0.0, 1.0)),
            Kind::HardSwish => map_f32(x, |a| a * clamp_nan(a * (1.0 / 6.0) + 0.5, 0.0, 1.0)),
            Kind::Tanh => map_f32(x, tanh_f32),
            Kind::Erf => map_f32(x, erf_f32),
            Kind::Gelu { tanh: false } => map_f32(x, gelu_f32),
            Kind::Gelu { tanh: true } => map_f32(x, gelu_tanh_f32),
            Kind::Clip { min, max, from_inputs } => {
                let (mut lo, mut hi) = (min, max);
                if from_inputs {
                    if let Some(t) = Self::clip_bound(inputs, 1, x.dtype())? {
                        lo = t.f32s()?[0];
                    }
                    if let Some(t) = Self::clip_bound(inputs, 2, x.dtype())? {
                        hi = t.f32s()?[0];
                    }
                }
                map_f32(x, |a| clamp_nan(a, lo, hi))
            }
            Kind::Sqrt => map_f32(x, f32::sqrt),
            Kind::Exp => map_f32(x, exp_f32),
            Kind::Log => map_f32(x, f32::ln),
            Kind::Neg => map_f32(x, |a| -a),
            Kind::Abs => map_f32(x, f32::abs),
        }
    }

    fn eval_int(&self, x: &Tensor, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
        match self.kind {
            Kind::Relu => map_int(x, |a| a.max(0)),
            Kind::Neg => map_int(x, i64::wrapping_neg),
            Kind::Abs => map_int(x, i64::wrapping_abs),
            Kind::Clip { from_inputs, .. } => {
                let (mut lo, mut hi) = (i64::MIN, i64::MAX);
                if from_inputs {
                    if let Some(t) = Self::clip_bound(inputs, 1, x.dtype())? {
                        lo = t.i64s()?[0];
                    }
                    if let Some(t) = Self::clip_bound(inputs, 2, x.dtype())? {
                        hi = t.i64s()?[0];
                    }
                }
                map_int(x, |a| a.max(lo).min(hi))
            }
            _ => Err(op_error(format!("{} does not support input type {}", self.name(), x.dtype()))),
        }
    }
}

impl Op for Activation {
    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let a = fact(inputs, 0)?;
        self.check_type(a.dtype)?;
        if let Kind::Clip { from_inputs: true, .. } = self.kind {
            for (i, which) in [(1, "min"), (2, "max")] {
                if let Some(b) = opt(inputs, i) {
                    if b.shape.iter().product::<usize>() != 1 {
                        return Err(op_error(format!("Clip {which} must be a scalar, got shape {:?}", b.shape)));
                    }
                    if b.dtype != a.dtype {
                        return Err(op_error(format!("Clip {which} has type {} but the input is {}", b.dtype, a.dtype)));
                    }
                }
            }
        }
        Ok(vec![Fact::new(a.dtype, a.shape.clone())])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        self.check_type(x.dtype())?;
        let out = match x.data() {
            Data::F32(_) => self.eval_float(x, inputs)?,
            Data::I64(_) => self.eval_int(x, inputs)?,
            Data::Bool(_) => return Err(op_error(format!("{} does not support input type bool", self.name()))),
        };
        Ok(vec![out])
    }
}
