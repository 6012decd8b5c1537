//! Element-wise unary ops: Relu, LeakyRelu, Sigmoid, HardSigmoid,
//! HardSwish, Tanh, Erf, Gelu, Clip, Sqrt, Exp, Log, Neg, Abs.
//!
//! Transcendental functions use branch-free f32 approximations
//! ([`exp_f32`], [`tanh_f32`], [`erf_f32`]...) that the compiler can
//! vectorise, accurate to a few ulps (erf: < 3e-7 absolute).

use rayon::prelude::*;

use super::channels::{ChanCx, ChanMap};
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
        "LeakyRelu" => Kind::LeakyRelu {
            alpha: node.attr_float("alpha", 0.01)?,
        },
        "Sigmoid" => Kind::Sigmoid,
        "HardSigmoid" => Kind::HardSigmoid {
            alpha: node.attr_float("alpha", 0.2)?,
            beta: node.attr_float("beta", 0.5)?,
        },
        "HardSwish" => Kind::HardSwish,
        "Tanh" => Kind::Tanh,
        "Erf" => Kind::Erf,
        "Gelu" => match node.attr_string("approximate", "none")?.as_str() {
            "none" => Kind::Gelu { tanh: false },
            "tanh" => Kind::Gelu { tanh: true },
            o => {
                return Err(op_error(format!(
                    "Gelu: unknown approximate '{o}' (expected 'none' or 'tanh')"
                )))
            }
        },
        "Clip" => {
            if opset < 11 {
                Kind::Clip {
                    min: node.attr_float("min", f32::MIN)?,
                    max: node.attr_float("max", f32::MAX)?,
                    from_inputs: false,
                }
            } else {
                Kind::Clip {
                    min: f32::MIN,
                    max: f32::MAX,
                    from_inputs: true,
                }
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
    let xc = x.clamp(-104.0, 89.0); // keeps NaN
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = xc - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
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
    let small = ((((-5.704_989e-3 * s + 2.063_909e-2) * s - 5.373_971_6e-2) * s + 1.333_144_2e-1)
        * s
        - 0.333_332_8)
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
    let p = (((((1.205_533_3e-4 * s - 8.548_327e-4) * s + 5.223_978e-3) * s - 2.686_617_2e-2) * s
        + 1.128_379_2e-1)
        * s
        - 3.761_263_8e-1)
        * s
        + std::f32::consts::FRAC_2_SQRT_PI;
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
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_26 + t * 0.170_872_76))))))));
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
    // Compiled with AVX2/FMA where available: exp-based activations
    // (Sigmoid, SiLU's half, GELU) run twice as wide.
    let v = super::pool::collect_chunks(x.len(), CHUNK, |at, len| {
        x[at..at + len].iter().map(|&a| f(a))
    });
    Ok(Tensor::from_float(t.dtype(), t.shape().to_vec(), v))
}

/// Maps an integer tensor element-wise; results wrap to the dtype's width.
pub fn map_int(t: &Tensor, f: impl Fn(i64) -> i64 + Sync + Send) -> Result<Tensor> {
    let x = t.i64s()?;
    let dt = t.dtype();
    let g = |a: i64| wrap_int(dt, f(a));
    let v: Vec<i64> = if x.len() >= PAR_THRESHOLD {
        x.par_iter().map(|&a| g(a)).collect()
    } else {
        x.iter().map(|&a| g(a)).collect()
    };
    Ok(Tensor::from_int(dt, t.shape().to_vec(), v))
}

impl Activation {
    fn supports_int(&self) -> bool {
        matches!(
            self.kind,
            Kind::Relu | Kind::Neg | Kind::Abs | Kind::Clip { .. }
        )
    }

    fn check_type(&self, dt: DType) -> Result<()> {
        match dt.storage() {
            Storage::Float => Ok(()),
            Storage::Int if self.supports_int() => Ok(()),
            _ => Err(op_error(format!(
                "{} does not support input type {dt}",
                self.name()
            ))),
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
    fn clip_bound<'a>(
        inputs: &[Option<&'a Tensor>],
        i: usize,
        dt: DType,
    ) -> Result<Option<&'a Tensor>> {
        let Some(t) = opt(inputs, i) else {
            return Ok(None);
        };
        let which = if i == 1 { "min" } else { "max" };
        if t.len() != 1 {
            return Err(op_error(format!(
                "Clip {which} must be a scalar, got shape {:?}",
                t.shape()
            )));
        }
        if t.dtype() != dt {
            return Err(op_error(format!(
                "Clip {which} has type {} but the input is {dt}",
                t.dtype()
            )));
        }
        Ok(Some(t))
    }

    fn eval_float(&self, x: &Tensor, inputs: &[Option<&Tensor>]) -> Result<Tensor> {
        match self.kind {
            Kind::Relu => map_f32(x, |a| if a < 0.0 { 0.0 } else { a }),
            Kind::LeakyRelu { alpha } => map_f32(x, |a| if a < 0.0 { a * alpha } else { a }),
            Kind::Sigmoid => map_f32(x, sigmoid_f32),
            Kind::HardSigmoid { alpha, beta } => {
                map_f32(x, |a| clamp_nan(alpha * a + beta, 0.0, 1.0))
            }
            Kind::HardSwish => map_f32(x, |a| a * clamp_nan(a * (1.0 / 6.0) + 0.5, 0.0, 1.0)),
            Kind::Tanh => map_f32(x, tanh_f32),
            Kind::Erf => map_f32(x, erf_f32),
            Kind::Gelu { tanh: false } => map_f32(x, gelu_f32),
            Kind::Gelu { tanh: true } => map_f32(x, gelu_tanh_f32),
            Kind::Clip {
                min,
                max,
                from_inputs,
            } => {
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
            _ => Err(op_error(format!(
                "{} does not support input type {}",
                self.name(),
                x.dtype()
            ))),
        }
    }
}

impl Op for Activation {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        Some(cx.passthrough())
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let a = fact(inputs, 0)?;
        self.check_type(a.dtype)?;
        if let Kind::Clip {
            from_inputs: true, ..
        } = self.kind
        {
            for (i, which) in [(1, "min"), (2, "max")] {
                if let Some(b) = opt(inputs, i) {
                    if b.shape.iter().product::<usize>() != 1 {
                        return Err(op_error(format!(
                            "Clip {which} must be a scalar, got shape {:?}",
                            b.shape
                        )));
                    }
                    if b.dtype != a.dtype {
                        return Err(op_error(format!(
                            "Clip {which} has type {} but the input is {}",
                            b.dtype, a.dtype
                        )));
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
            Data::Bool(_) => {
                return Err(op_error(format!(
                    "{} does not support input type bool",
                    self.name()
                )))
            }
        };
        Ok(vec![out])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute};

    const X: [f32; 16] = [
        -5.0, -3.5, -2.0, -1.0, -0.7, -0.3, -0.01, 0.0, 0.01, 0.3, 0.7, 1.0, 2.0, 3.5, 5.0, 10.0,
    ];

    fn node(name: &str, attrs: Vec<Attribute>) -> Node {
        Node::new("n", name, &["x", "lo", "hi"], &["y"], attrs)
    }

    fn run_with(
        name: &str,
        attrs: Vec<Attribute>,
        opset: i64,
        ins: &[Option<&Tensor>],
    ) -> Result<Tensor> {
        build(&node(name, attrs), opset)?
            .eval(ins)
            .map(|mut v| v.remove(0))
    }

    fn run(name: &str, attrs: Vec<Attribute>, x: &[f32]) -> Vec<f32> {
        let t = Tensor::from_f32(vec![x.len()], x.to_vec());
        run_with(name, attrs, 20, &[Some(&t)])
            .unwrap()
            .f32s()
            .unwrap()
            .to_vec()
    }

    fn close(got: &[f32], want: &[f32], atol: f32, rtol: f32) {
        assert_eq!(got.len(), want.len());
        for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= atol + rtol * w.abs(),
                "element {k}: got {g}, want {w}"
            );
        }
    }

    fn fl(name: &str, v: f32) -> Attribute {
        Attribute::new(name, AttrValue::Float(v))
    }

    // Reference values from ONNX Runtime 1.23 on X.
    #[test]
    fn matches_onnxruntime() {
        let cases: Vec<(&str, Vec<Attribute>, [f32; 16])> = vec![
            (
                "Sigmoid",
                vec![],
                [
                    0.006692916,
                    0.029312193,
                    0.11920291,
                    0.26894143,
                    0.33181226,
                    0.4255575,
                    0.49750003,
                    0.5,
                    0.5025,
                    0.5744425,
                    0.66818774,
                    0.7310586,
                    0.8807971,
                    0.9706878,
                    0.9933071,
                    0.9999546,
                ],
            ),
            (
                "Tanh",
                vec![],
                [
                    -0.99990916,
                    -0.99817795,
                    -0.9640276,
                    -0.7615942,
                    -0.6043678,
                    -0.2913126,
                    -0.009999665,
                    0.0,
                    0.009999665,
                    0.2913126,
                    0.6043678,
                    0.7615942,
                    0.9640276,
                    0.99817795,
                    0.99990916,
                    1.0,
                ],
            ),
            (
                "Erf",
                vec![],
                [
                    -1.0,
                    -0.9999993,
                    -0.9953223,
                    -0.8427008,
                    -0.6778012,
                    -0.32862678,
                    -0.011283415,
                    0.0,
                    0.011283415,
                    0.32862678,
                    0.6778012,
                    0.8427008,
                    0.9953223,
                    0.9999993,
                    1.0,
                    1.0,
                ],
            ),
            (
                "Gelu",
                vec![],
                [
                    -1.4333e-6,
                    -0.0008142292,
                    -0.04550028,
                    -0.15865526,
                    -0.16937456,
                    -0.11462658,
                    -0.004960106,
                    0.0,
                    0.005039893,
                    0.18537344,
                    0.53062546,
                    0.8413447,
                    1.9544997,
                    3.4991858,
                    4.9999986,
                    10.0,
                ],
            ),
            (
                "Gelu",
                vec![Attribute::new(
                    "approximate",
                    AttrValue::String(b"tanh".to_vec()),
                )],
                [
                    -2.9802322e-7,
                    -0.0006161481,
                    -0.045402348,
                    -0.15880796,
                    -0.16942984,
                    -0.11462908,
                    -0.004960106,
                    0.0,
                    0.005039893,
                    0.18537092,
                    0.53057015,
                    0.841192,
                    1.9545977,
                    3.4993837,
                    4.9999995,
                    10.0,
                ],
            ),
            (
                "HardSigmoid",
                vec![],
                [
                    0.0,
                    0.0,
                    0.099999994,
                    0.3,
                    0.36,
                    0.44,
                    0.498,
                    0.5,
                    0.502,
                    0.56,
                    0.64,
                    0.7,
                    0.9,
                    1.0,
                    1.0,
                    1.0,
                ],
            ),
            (
                "HardSigmoid",
                vec![fl("alpha", 0.3), fl("beta", 0.4)],
                [
                    0.0,
                    0.0,
                    0.0,
                    0.099999994,
                    0.19,
                    0.31,
                    0.397,
                    0.4,
                    0.403,
                    0.49,
                    0.61,
                    0.70000005,
                    1.0,
                    1.0,
                    1.0,
                    1.0,
                ],
            ),
            (
                "HardSwish",
                vec![],
                [
                    -0.0,
                    -0.0,
                    -0.3333333,
                    -0.3333333,
                    -0.26833332,
                    -0.135,
                    -0.0049833334,
                    0.0,
                    0.0050166664,
                    0.165,
                    0.43166667,
                    0.6666667,
                    1.6666667,
                    3.5,
                    5.0,
                    10.0,
                ],
            ),
            (
                "LeakyRelu",
                vec![],
                [
                    -0.05, -0.035, -0.02, -0.01, -0.007, -0.003, -1e-4, 0.0, 0.01, 0.3, 0.7, 1.0,
                    2.0, 3.5, 5.0, 10.0,
                ],
            ),
            (
                "LeakyRelu",
                vec![fl("alpha", 0.2)],
                [
                    -1.0, -0.7, -0.4, -0.2, -0.14, -0.06, -0.002, 0.0, 0.01, 0.3, 0.7, 1.0, 2.0,
                    3.5, 5.0, 10.0,
                ],
            ),
            (
                "Exp",
                vec![],
                [
                    0.006737947,
                    0.030197384,
                    0.13533528,
                    0.36787945,
                    0.4965853,
                    0.7408182,
                    0.99004984,
                    1.0,
                    1.0100502,
                    1.3498588,
                    2.0137527,
                    2.7182817,
                    7.389056,
                    33.11545,
                    148.41316,
                    22026.467,
                ],
            ),
            (
                "Relu",
                vec![],
                [
                    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.01, 0.3, 0.7, 1.0, 2.0, 3.5, 5.0,
                    10.0,
                ],
            ),
            ("Neg", vec![], X.map(|v| -v)),
            ("Abs", vec![], X.map(f32::abs)),
        ];
        for (name, attrs, want) in cases {
            let got = run(name, attrs, &X);
            // Gelu at -5: ONNX Runtime loses the tail to cancellation
            // (-1.49e-6); the exact value is -1.4333e-6, which we give.
            close(&got, &want, 2e-7, 2e-6);
        }
        let got = run("Sqrt", vec![], &[0.0, 2.0, 9.0, -1.0]);
        assert_eq!(&got[..3], &[0.0, 2f32.sqrt(), 3.0]);
        assert!(got[3].is_nan());
        let got = run("Log", vec![], &[1.0, std::f32::consts::E, 0.0, -1.0]);
        close(&got[..2], &[0.0, 1.0], 1e-7, 1e-7);
        assert_eq!(got[2], f32::NEG_INFINITY);
        assert!(got[3].is_nan());
    }

    /// erf in f64 to about 1e-15: the all-positive series
    /// erf(x) = 2/sqrt(pi) e^-x^2 sum 2^n x^(2n+1) / (1*3*...*(2n+1)).
    fn erf64(x: f64) -> f64 {
        if x.abs() > 6.0 {
            return x.signum();
        }
        let (mut term, mut sum) = (x, x);
        for n in 1..400 {
            term *= 2.0 * x * x / (2 * n + 1) as f64;
            sum += term;
            if term.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    fn grid(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |k| lo + (hi - lo) * k as f32 / n as f32)
    }

    #[test]
    fn exp_accuracy() {
        for x in grid(-87.0, 88.7, 200_000) {
            let (g, w) = (exp_f32(x) as f64, (x as f64).exp());
            assert!(((g - w) / w).abs() < 2.5e-7, "exp({x}) = {g}, want {w}");
        }
        // Subnormal results and the ends of the range.
        for x in grid(-103.0, -87.5, 1000) {
            let (g, w) = (exp_f32(x) as f64, (x as f64).exp());
            assert!((g - w).abs() < 2e-45, "exp({x}) = {g}, want {w}");
        }
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(1e30), f32::INFINITY);
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(-105.0), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!(exp_f32(88.72).is_finite());
    }

    #[test]
    fn tanh_sigmoid_accuracy() {
        for x in grid(-12.0, 12.0, 100_000) {
            let w = (x as f64).tanh();
            let g = tanh_f32(x) as f64;
            assert!(
                (g - w).abs() <= 2.5e-7 * w.abs().max(1e-30) + 1e-30,
                "tanh({x}) = {g}, want {w}"
            );
            let w = 1.0 / (1.0 + (-(x as f64)).exp());
            let g = sigmoid_f32(x) as f64;
            assert!((g - w).abs() <= 3e-7 * w, "sigmoid({x}) = {g}, want {w}");
        }
        assert_eq!(tanh_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_f32(1e-30), 1e-30);
        assert!(tanh_f32(f32::NAN).is_nan());
        assert_eq!(sigmoid_f32(-200.0), 0.0);
        assert_eq!(sigmoid_f32(200.0), 1.0);
    }

    #[test]
    fn erf_gelu_accuracy() {
        let mut worst = 0f64;
        for x in grid(-7.0, 7.0, 280_000) {
            let w = erf64(x as f64);
            let g = erf_f32(x) as f64;
            worst = worst.max((g - w).abs());
            // Relative accuracy near 0 too.
            if x.abs() < 0.5 {
                assert!(
                    (g - w).abs() <= 2e-7 * w.abs() + 1e-30,
                    "erf({x}) = {g}, want {w}"
                );
            }
            let w = 0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2));
            let g = gelu_f32(x) as f64;
            assert!(
                (g - w).abs() <= 3e-7 * w.abs() + 1e-7,
                "gelu({x}) = {g}, want {w}"
            );
            let u =
                (2.0 / std::f64::consts::PI).sqrt() * (x as f64 + 0.044715 * (x as f64).powi(3));
            let w = 0.5 * x as f64 * (1.0 + u.tanh());
            let g = gelu_tanh_f32(x) as f64;
            assert!(
                (g - w).abs() <= 3e-7 * w.abs() + 1e-7,
                "gelu_tanh({x}) = {g}, want {w}"
            );
        }
        assert!(worst < 3e-7, "erf max abs error {worst}");
        // Deep negative tail of exact GELU keeps relative accuracy.
        let w = -4.976_768_459_417_455_5e-15; // -8 * erfc(8 / sqrt 2) / 2
        assert!(((gelu_f32(-8.0) as f64 - w) / w).abs() < 2e-5);
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert!(erf_f32(f32::NAN).is_nan());
        assert_eq!(erf_f32(0.0), 0.0);
    }

    #[test]
    fn clip_attributes_and_inputs() {
        let x = Tensor::from_f32(vec![5], vec![-3.0, -1.0, 0.5, 4.0, f32::NAN]);
        let attrs = || vec![fl("min", -1.5), fl("max", 2.0)];
        let r = run_with("Clip", attrs(), 6, &[Some(&x)]).unwrap();
        let r = r.f32s().unwrap();
        assert_eq!(&r[..4], &[-1.5, -1.0, 0.5, 2.0]);
        assert!(r[4].is_nan());
        // Opset 6 defaults: lowest and highest finite values.
        let inf = Tensor::from_f32(vec![2], vec![f32::NEG_INFINITY, f32::INFINITY]);
        let r = run_with("Clip", vec![], 6, &[Some(&inf)]).unwrap();
        assert_eq!(r.f32s().unwrap(), &[f32::MIN, f32::MAX]);
        // Opset 11+: optional inputs.
        let lo = Tensor::from_f32(vec![], vec![0.0]);
        let hi = Tensor::from_f32(vec![1], vec![6.0]);
        let y = Tensor::from_f32(vec![4], vec![-2.0, 3.0, 7.0, 6.0]);
        let r = run_with("Clip", vec![], 13, &[Some(&y), Some(&lo), Some(&hi)]).unwrap();
        assert_eq!(r.f32s().unwrap(), &[0.0, 3.0, 6.0, 6.0]);
        let r = run_with("Clip", vec![], 13, &[Some(&y), None, Some(&hi)]).unwrap();
        assert_eq!(r.f32s().unwrap(), &[-2.0, 3.0, 6.0, 6.0]);
        let r = run_with("Clip", vec![], 13, &[Some(&y), Some(&lo)]).unwrap();
        assert_eq!(r.f32s().unwrap(), &[0.0, 3.0, 7.0, 6.0]);
        let r = run_with("Clip", vec![], 13, &[Some(&y)]).unwrap();
        assert_eq!(r.f32s().unwrap(), y.f32s().unwrap());
        // Attributes are ignored from opset 11.
        let r = run_with("Clip", attrs(), 11, &[Some(&y)]).unwrap();
        assert_eq!(r.f32s().unwrap(), y.f32s().unwrap());
        // min > max: everything becomes max.
        let r = run_with("Clip", vec![], 13, &[Some(&y), Some(&hi), Some(&lo)]).unwrap();
        assert_eq!(r.f32s().unwrap(), &[0.0; 4]);
        // Integers.
        let yi = Tensor::from_int(DType::I32, vec![4], vec![-5, 0, 5, 10]);
        let (li, hi_i) = (
            Tensor::from_int(DType::I32, vec![], vec![-1]),
            Tensor::from_int(DType::I32, vec![], vec![6]),
        );
        let r = run_with("Clip", vec![], 13, &[Some(&yi), Some(&li), Some(&hi_i)]).unwrap();
        assert_eq!(
            (r.dtype(), r.i64s().unwrap()),
            (DType::I32, &[-1, 0, 5, 6][..])
        );
        // Errors: non-scalar bound, wrong bound type.
        let two = Tensor::from_f32(vec![2], vec![0.0, 1.0]);
        assert!(run_with("Clip", vec![], 13, &[Some(&y), Some(&two)]).is_err());
        assert!(run_with("Clip", vec![], 13, &[Some(&y), Some(&li)]).is_err());
        let op = build(&node("Clip", vec![]), 13).unwrap();
        let fy = Fact::new(DType::F32, vec![4]);
        let f2 = Fact::new(DType::F32, vec![2]);
        let f0 = Fact::new(DType::F32, vec![]);
        assert!(op.infer(&[Some(&fy), Some(&f2)]).is_err());
        assert_eq!(
            op.infer(&[Some(&fy), None, Some(&f0)]).unwrap()[0].shape,
            vec![4]
        );
    }

    #[test]
    fn integer_ops_and_type_errors() {
        let x = Tensor::from_i64(vec![4], vec![-3, 0, 7, i64::MIN]);
        let r = run_with("Neg", vec![], 13, &[Some(&x)]).unwrap();
        assert_eq!(r.i64s().unwrap(), &[3, 0, -7, i64::MIN]);
        let r = run_with("Abs", vec![], 13, &[Some(&x)]).unwrap();
        assert_eq!(r.i64s().unwrap(), &[3, 0, 7, i64::MIN]);
        let r = run_with("Relu", vec![], 14, &[Some(&x)]).unwrap();
        assert_eq!(r.i64s().unwrap(), &[0, 0, 7, 0]);
        // i8 wraps like C: -(-128) is -128.
        let x8 = Tensor::from_int(DType::I8, vec![2], vec![-128, 5]);
        let r = run_with("Neg", vec![], 13, &[Some(&x8)]).unwrap();
        assert_eq!((r.dtype(), r.i64s().unwrap()), (DType::I8, &[-128, -5][..]));
        for name in ["Sigmoid", "Exp", "Sqrt", "LeakyRelu", "Gelu", "Erf"] {
            assert!(run_with(name, vec![], 20, &[Some(&x)]).is_err(), "{name}");
        }
        let bx = Tensor::from_bool(vec![1], vec![true]);
        assert!(run_with("Relu", vec![], 20, &[Some(&bx)]).is_err());
        assert!(run_with("Relu", vec![], 20, &[None]).is_err());
        assert!(run_with("Relu", vec![], 20, &[]).is_err());
        let op = build(&node("Exp", vec![]), 13).unwrap();
        assert!(op.infer(&[Some(&Fact::new(DType::I64, vec![2]))]).is_err());
        let o = op
            .infer(&[Some(&Fact::new(DType::F16, vec![2, 3]))])
            .unwrap();
        assert_eq!((o[0].dtype, o[0].shape.clone()), (DType::F16, vec![2, 3]));
        let bad = Attribute::new("approximate", AttrValue::String(b"fast".to_vec()));
        assert!(build(&node("Gelu", vec![bad]), 20).is_err());
        assert!(build(&node("Softplus", vec![]), 20).is_err());
    }

    #[test]
    fn large_tensors_in_parallel_match_scalar() {
        let n = 3 * PAR_THRESHOLD + 17;
        let x: Vec<f32> = (0..n).map(|k| (k as f32 * 0.001) - 40.0).collect();
        let t = Tensor::from_float(DType::F16, vec![n], x.clone());
        let op = build(&node("Gelu", vec![]), 20).unwrap();
        let r = op.eval(&[Some(&t)]).unwrap().remove(0);
        assert_eq!(r.dtype(), DType::F16);
        let want: Vec<f32> = x.iter().map(|&v| gelu_f32(v)).collect();
        assert_eq!(r.f32s().unwrap(), &want[..]);
        let ti = Tensor::from_i64(vec![n], (0..n as i64).map(|k| k - 1000).collect());
        let r = run_with("Abs", vec![], 13, &[Some(&ti)]).unwrap();
        assert!(r
            .i64s()
            .unwrap()
            .iter()
            .enumerate()
            .all(|(k, &v)| v == (k as i64 - 1000).abs()));
    }
}
