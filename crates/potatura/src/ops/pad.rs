//! Pad: constant, reflect, edge and wrap modes; negative pads crop.
//!
//! As in ONNX Runtime, negative pads first slice the input, then the
//! remaining positive pads are applied to the slice.

use super::channels::{ChanCx, ChanMap};
use super::common::{axis, fact, fact_value, input, opt, PAR_THRESHOLD};
use super::pool::{build_vec, MAX_OUTPUT_ELEMENTS};
use super::{op_error, Fact, Op};
use crate::error::Result;
use crate::ir::{strides, Data, Node, Storage, Tensor};
use std::mem::MaybeUninit;

/// How the border is filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// A constant value.
    Constant,
    /// Mirror without repeating the edge value (`[1,2,3]` -> `3,2 | 1,2,3 | 2,1`);
    /// pads longer than the axis reflect again, as numpy does.
    Reflect,
    /// Repeat the edge value.
    Edge,
    /// Wrap around (opset 19).
    Wrap,
}

/// The Pad op.
#[derive(Debug)]
pub struct Pad {
    /// Border mode.
    pub mode: PadMode,
    /// Opset < 11: pads from the attribute (all begins, then all ends).
    pub pads_attr: Option<Vec<i64>>,
    /// Opset < 11: the constant from the `value` attribute.
    pub value_attr: f32,
}

/// Builds Pad.
pub fn build(node: &Node, opset: i64) -> Result<Box<dyn Op>> {
    if node.op_type != "Pad" {
        return Err(op_error(format!("pad::build called for {}", node.op_type)));
    }
    let mode = match node.attr_string("mode", "constant")?.as_str() {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "edge" => PadMode::Edge,
        "wrap" => PadMode::Wrap,
        o => return Err(op_error(format!("unknown Pad mode '{o}'"))),
    };
    let (pads_attr, value_attr) = if opset < 11 {
        let p = match node.attr_ints("pads")? {
            Some(p) => p,
            None => node
                .attr_ints("paddings")?
                .ok_or_else(|| op_error("the pads attribute is required before opset 11"))?,
        };
        (Some(p), node.attr_float("value", 0.0)?)
    } else {
        (None, 0.0)
    };
    Ok(Box::new(Pad {
        mode,
        pads_attr,
        value_attr,
    }))
}

/// One axis: the kept slice `[lo, lo + len)` of the input, then `pre` and
/// `post` padded positions around it.
#[derive(Clone, Copy, Debug)]
struct AxisPad {
    lo: usize,
    len: usize,
    pre: usize,
    post: usize,
}

impl AxisPad {
    fn out_len(&self) -> usize {
        self.pre + self.len + self.post
    }

    /// Input index for output position `o`, or -1 for the constant.
    fn source(&self, o: usize, mode: PadMode) -> i64 {
        let n = self.len as i64;
        let j = o as i64 - self.pre as i64;
        let k = if (0..n).contains(&j) {
            j
        } else {
            match mode {
                PadMode::Constant => return -1,
                PadMode::Edge => j.clamp(0, n - 1),
                PadMode::Wrap => j.rem_euclid(n),
                PadMode::Reflect => {
                    if n == 1 {
                        0
                    } else {
                        let m = j.rem_euclid(2 * (n - 1));
                        if m >= n {
                            2 * (n - 1) - m
                        } else {
                            m
                        }
                    }
                }
            }
        };
        self.lo as i64 + k
    }
}

impl Pad {
    /// Full per-axis pads (2 * rank, begins then ends) from the inputs.
    fn full_pads(
        &self,
        rank: usize,
        pads: Option<&Tensor>,
        axes: Option<&Tensor>,
        axes_given: bool,
    ) -> Result<Vec<i64>> {
        let raw = match &self.pads_attr {
            Some(p) => p.clone(),
            None => {
                let t = pads.ok_or_else(|| {
                    op_error("the pads input must be a constant to infer the output shape")
                })?;
                if t.dtype().storage() != Storage::Int {
                    return Err(op_error(format!(
                        "pads must be an integer tensor, got {}",
                        t.dtype()
                    )));
                }
                t.to_i64_vec()
            }
        };
        let axes: Vec<usize> = if axes_given {
            let t = axes.ok_or_else(|| {
                op_error("the axes input must be a constant to infer the output shape")
            })?;
            if t.dtype().storage() != Storage::Int {
                return Err(op_error(format!(
                    "axes must be an integer tensor, got {}",
                    t.dtype()
                )));
            }
            let v: Vec<usize> = t
                .to_i64_vec()
                .iter()
                .map(|&a| axis(a, rank))
                .collect::<Result<_>>()?;
            let mut seen = vec![false; rank];
            for &a in &v {
                if std::mem::replace(&mut seen[a], true) {
                    return Err(op_error(format!(
                        "axes {:?} repeat an axis",
                        t.to_i64_vec()
                    )));
                }
            }
            v
        } else {
            (0..rank).collect()
        };
        if raw.len() != 2 * axes.len() {
            return Err(op_error(format!(
                "pads has {} values, expected {} (2 per padded axis, input rank {rank})",
                raw.len(),
                2 * axes.len()
            )));
        }
        let mut full = vec![0i64; 2 * rank];
        for (i, &a) in axes.iter().enumerate() {
            full[a] = raw[i];
            full[a + rank] = raw[i + axes.len()];
        }
        Ok(full)
    }

    fn plan(&self, shape: &[usize], pads: &[i64]) -> Result<Vec<AxisPad>> {
        let rank = shape.len();
        let mut out = Vec::with_capacity(rank);
        for (a, &d) in shape.iter().enumerate() {
            let (pb, pe) = (pads[a], pads[a + rank]);
            let crop_b = pb.min(0).unsigned_abs();
            let crop_e = pe.min(0).unsigned_abs();
            let d64 = d as u64;
            let cap = |p: i64| p.clamp(0, MAX_OUTPUT_ELEMENTS as i64 + 1) as u64;
            let (pre, post) = (cap(pb), cap(pe));
            let ap = if crop_b.saturating_add(crop_e) <= d64 {
                AxisPad {
                    lo: crop_b as usize,
                    len: (d64 - crop_b - crop_e) as usize,
                    pre: pre as usize,
                    post: post as usize,
                }
            } else {
                // Cropping past the values padded on the other side: as ONNX
                // Runtime, pad then crop, which leaves only padding.
                let out = (d64 + pre + post)
                    .checked_sub(crop_b.saturating_add(crop_e))
                    .ok_or_else(|| {
                        op_error(format!(
                            "pads {pads:?} crop more than the {d} values of axis {a}"
                        ))
                    })?;
                AxisPad {
                    lo: 0,
                    len: 0,
                    pre: out as usize,
                    post: 0,
                }
            };
            if ap.len == 0 && ap.pre + ap.post > 0 && self.mode != PadMode::Constant {
                return Err(op_error(format!(
                    "cannot pad axis {a} in {:?} mode: nothing is left of it to copy",
                    self.mode
                )));
            }
            out.push(ap);
        }
        let total = out
            .iter()
            .try_fold(1usize, |acc, p| acc.checked_mul(p.out_len()))
            .unwrap_or(usize::MAX);
        if total > MAX_OUTPUT_ELEMENTS {
            return Err(op_error(format!(
                "pads {pads:?} give an output that is too large"
            )));
        }
        Ok(out)
    }
}

/// Pads `x` (of `in_shape`) following `plan`.
fn pad_data<T: Copy + Send + Sync>(
    x: &[T],
    in_shape: &[usize],
    plan: &[AxisPad],
    mode: PadMode,
    cval: T,
) -> Vec<T> {
    let rank = in_shape.len();
    if rank == 0 {
        return x.to_vec();
    }
    let out_shape: Vec<usize> = plan.iter().map(|p| p.out_len()).collect();
    let total: usize = out_shape.iter().product();
    if total == 0 {
        return Vec::new();
    }
    let tables: Vec<Vec<i64>> = plan
        .iter()
        .map(|p| (0..p.out_len()).map(|o| p.source(o, mode)).collect())
        .collect();
    let in_str = strides(in_shape);
    let last = rank - 1;
    let row_len = out_shape[last];
    let lp = plan[last];
    let row_strides = strides(&out_shape[..last]);
    // Writes every element of output row `r`.
    let fill_row = |r: usize, row: &mut [MaybeUninit<T>]| {
        let mut off = 0usize;
        for a in 0..last {
            let i = (r / row_strides[a]) % out_shape[a];
            let s = tables[a][i];
            if s < 0 {
                for o in row.iter_mut() {
                    o.write(cval);
                }
                return;
            }
            off += s as usize * in_str[a];
        }
        let src = &x[off..off + in_shape[last]];
        let mid = &mut row[lp.pre..lp.pre + lp.len];
        for (o, &v) in mid.iter_mut().zip(&src[lp.lo..lp.lo + lp.len]) {
            o.write(v);
        }
        let t = &tables[last];
        for o in (0..lp.pre).chain(lp.pre + lp.len..row_len) {
            row[o].write(if t[o] < 0 { cval } else { src[t[o] as usize] });
        }
    };
    let par = total >= PAR_THRESHOLD && total > row_len;
    let rows_per_task = if par {
        (PAR_THRESHOLD / 4 / row_len).max(1)
    } else {
        total / row_len
    };
    let fill = |start: usize, chunk: &mut [MaybeUninit<T>]| {
        for (k, row) in chunk.chunks_mut(row_len).enumerate() {
            fill_row(start / row_len + k, row);
        }
    };
    // SAFETY: chunks hold whole rows and `fill_row` writes every element.
    unsafe { build_vec(total, rows_per_task * row_len, par, fill) }
}

impl Op for Pad {
    fn channels(&self, cx: &ChanCx) -> Option<ChanMap> {
        // Padding along the channel axis would change the channel count.
        match cx.axis(0) {
            Some(a) => cx.keep_channels(a),
            None => cx.keep_channels(0),
        }
    }

    fn infer(&self, inputs: &[Option<&Fact>]) -> Result<Vec<Fact>> {
        let x = fact(inputs, 0)?;
        let pads = self.full_pads(
            x.shape.len(),
            fact_value(inputs, 1),
            fact_value(inputs, 3),
            opt(inputs, 3).is_some(),
        )?;
        let plan = self.plan(&x.shape, &pads)?;
        Ok(vec![Fact::new(
            x.dtype,
            plan.iter().map(|p| p.out_len()).collect(),
        )])
    }

    fn eval(&self, inputs: &[Option<&Tensor>]) -> Result<Vec<Tensor>> {
        let x = input(inputs, 0)?;
        let pads = self.full_pads(
            x.rank(),
            opt(inputs, 1),
            opt(inputs, 3),
            opt(inputs, 3).is_some(),
        )?;
        let plan = self.plan(x.shape(), &pads)?;
        let out_shape: Vec<usize> = plan.iter().map(|p| p.out_len()).collect();
        let cv = match (&self.pads_attr, opt(inputs, 2)) {
            (None, Some(t)) if !t.is_empty() => {
                if t.dtype().storage() != x.dtype().storage() {
                    return Err(op_error(format!(
                        "constant_value is {} but the data is {}",
                        t.dtype(),
                        x.dtype()
                    )));
                }
                Some(t)
            }
            _ => None,
        };
        let data = match x.data() {
            Data::F32(v) => {
                let c = cv
                    .map(|t| t.f32s().map(|s| s[0]))
                    .transpose()?
                    .unwrap_or(self.value_attr);
                Data::F32(pad_data(v, x.shape(), &plan, self.mode, c))
            }
            Data::I64(v) => {
                let c = cv
                    .map(|t| t.i64s().map(|s| s[0]))
                    .transpose()?
                    .unwrap_or(self.value_attr as i64);
                Data::I64(pad_data(v, x.shape(), &plan, self.mode, c))
            }
            Data::Bool(v) => {
                let c = cv
                    .map(|t| t.bools().map(|s| s[0]))
                    .transpose()?
                    .unwrap_or(self.value_attr != 0.0);
                Data::Bool(pad_data(v, x.shape(), &plan, self.mode, c))
            }
        };
        Ok(vec![Tensor::new(x.dtype(), out_shape, data)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{AttrValue, Attribute, DType};

    fn op(mode: &str, opset: i64, attrs: Vec<(&str, AttrValue)>) -> Box<dyn Op> {
        let mut a: Vec<Attribute> = attrs
            .into_iter()
            .map(|(k, v)| Attribute::new(k, v))
            .collect();
        a.push(Attribute::new(
            "mode",
            AttrValue::String(mode.as_bytes().to_vec()),
        ));
        build(
            &Node::new("p", "Pad", &["x", "pads", "cv", "axes"], &["y"], a),
            opset,
        )
        .unwrap()
    }

    fn run(
        o: &dyn Op,
        x: &Tensor,
        pads: Option<&[i64]>,
        cv: Option<&Tensor>,
        axes: Option<&[i64]>,
    ) -> Result<Tensor> {
        let p = pads.map(|p| Tensor::from_i64(vec![p.len()], p.to_vec()));
        let a = axes.map(|a| Tensor::from_i64(vec![a.len()], a.to_vec()));
        let y = o.eval(&[Some(x), p.as_ref(), cv, a.as_ref()])?.remove(0);
        let fx = Fact::new(x.dtype(), x.shape().to_vec());
        let (fp, fa) = (p.map(Fact::known), a.map(Fact::known));
        let fc = cv.map(|t| Fact::new(t.dtype(), t.shape().to_vec()));
        let f = o.infer(&[Some(&fx), fp.as_ref(), fc.as_ref(), fa.as_ref()])?;
        assert_eq!(f[0].shape, y.shape());
        Ok(y)
    }

    fn v4() -> Tensor {
        Tensor::from_f32(vec![4], vec![1., 2., 3., 4.])
    }

    #[test]
    fn constant_2d_with_value() {
        let x = Tensor::from_f32(vec![2, 2], vec![1., 2., 3., 4.]);
        let c = Tensor::from_f32(vec![], vec![9.]);
        let y = run(
            op("constant", 13, vec![]).as_ref(),
            &x,
            Some(&[1, 0, 0, 2]),
            Some(&c),
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[3, 4]);
        assert_eq!(
            y.f32s().unwrap(),
            &[9., 9., 9., 9., 1., 2., 9., 9., 3., 4., 9., 9.]
        );
        // default value 0, no constant input
        let y = run(
            op("constant", 13, vec![]).as_ref(),
            &x,
            Some(&[0, 1, 0, 0]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(y.f32s().unwrap(), &[0., 1., 2., 0., 3., 4.]);
        // empty constant_value tensor counts as absent
        let e = Tensor::from_f32(vec![0], vec![]);
        let y = run(
            op("constant", 13, vec![]).as_ref(),
            &x,
            Some(&[0, 1, 0, 0]),
            Some(&e),
            None,
        )
        .unwrap();
        assert_eq!(y.f32s().unwrap(), &[0., 1., 2., 0., 3., 4.]);
    }

    #[test]
    fn reflect_edge_wrap_ort() {
        // All expected values from onnxruntime 1.31 (opset 19).
        let x = v4();
        let r = |mode: &str, p: &[i64]| {
            run(op(mode, 19, vec![]).as_ref(), &x, Some(p), None, None)
                .unwrap()
                .f32s()
                .unwrap()
                .to_vec()
        };
        assert_eq!(r("reflect", &[3, 0]), vec![4., 3., 2., 1., 2., 3., 4.]);
        assert_eq!(r("reflect", &[2, 1]), vec![3., 2., 1., 2., 3., 4., 3.]);
        assert_eq!(r("edge", &[-2, 3]), vec![3., 4., 4., 4., 4.]);
        assert_eq!(r("edge", &[2, 1]), vec![1., 1., 1., 2., 3., 4., 4.]);
        assert_eq!(r("wrap", &[-2, 3]), vec![3., 4., 3., 4., 3.]);
        assert_eq!(
            r("wrap", &[6, 1]),
            vec![3., 4., 1., 2., 3., 4., 1., 2., 3., 4., 1.]
        );
        // numpy.pad semantics beyond ORT's limits: repeated reflection
        assert_eq!(
            r("reflect", &[5, 0]),
            vec![2., 3., 4., 3., 2., 1., 2., 3., 4.]
        );
        let one = Tensor::from_f32(vec![1], vec![5.]);
        let y = run(
            op("reflect", 19, vec![]).as_ref(),
            &one,
            Some(&[2, 2]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(y.f32s().unwrap(), &[5.; 5]);
    }

    #[test]
    fn reflect_2d_numpy() {
        // np.pad(np.arange(1,7).reshape(2,3), ((1,1),(2,1)), 'reflect')
        let x = Tensor::from_f32(vec![2, 3], vec![1., 2., 3., 4., 5., 6.]);
        let y = run(
            op("reflect", 11, vec![]).as_ref(),
            &x,
            Some(&[1, 2, 1, 1]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[4, 6]);
        #[rustfmt::skip]
        let want = [
            6., 5., 4., 5., 6., 5.,
            3., 2., 1., 2., 3., 2.,
            6., 5., 4., 5., 6., 5.,
            3., 2., 1., 2., 3., 2.,
        ];
        assert_eq!(y.f32s().unwrap(), &want);
        // edge, NCHW-style (only spatial axes)
        let x = Tensor::from_f32(vec![1, 1, 2, 2], vec![1., 2., 3., 4.]);
        let y = run(
            op("edge", 11, vec![]).as_ref(),
            &x,
            Some(&[0, 0, 1, 0, 0, 0, 0, 1]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[1, 1, 3, 3]);
        assert_eq!(y.f32s().unwrap(), &[1., 2., 2., 1., 2., 2., 3., 4., 4.]);
    }

    #[test]
    fn negative_pads_crop() {
        let x = v4();
        let o = op("constant", 13, vec![]);
        assert_eq!(
            run(o.as_ref(), &x, Some(&[-1, -1]), None, None)
                .unwrap()
                .f32s()
                .unwrap(),
            &[2., 3.]
        );
        let y = run(o.as_ref(), &x, Some(&[-3, -1]), None, None).unwrap();
        assert_eq!(y.shape(), &[0]);
        let c = Tensor::from_f32(vec![1], vec![7.]);
        assert_eq!(
            run(o.as_ref(), &x, Some(&[-4, 1]), Some(&c), None)
                .unwrap()
                .f32s()
                .unwrap(),
            &[7.]
        );
        assert_eq!(
            run(o.as_ref(), &x, Some(&[-2, 1]), Some(&c), None)
                .unwrap()
                .f32s()
                .unwrap(),
            &[3., 4., 7.]
        );
        // 2-D: crop rows, pad columns
        let x = Tensor::from_f32(vec![3, 2], vec![1., 2., 3., 4., 5., 6.]);
        let y = run(
            op("reflect", 13, vec![]).as_ref(),
            &x,
            Some(&[-1, 1, 0, 0]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(y.shape(), &[2, 3]);
        assert_eq!(y.f32s().unwrap(), &[4., 3., 4., 6., 5., 6.]);
        // cropping past the padding on the other side leaves only padding (ORT)
        let x = Tensor::from_f32(vec![1, 3], vec![1., 2., 3.]);
        let c = Tensor::from_f32(vec![], vec![1.5]);
        let y = run(o.as_ref(), &x, Some(&[2, 3, -2, 0]), Some(&c), None).unwrap();
        assert_eq!(y.shape(), &[1, 6]);
        assert_eq!(y.f32s().unwrap(), &[1.5; 6]);
        let y = run(o.as_ref(), &x, Some(&[0, -4, 0, 2]), Some(&c), None).unwrap();
        assert_eq!(y.f32s().unwrap(), &[1.5]);
    }

    #[test]
    fn axes_input_opset18() {
        let x = Tensor::from_f32(vec![2, 2], vec![1., 2., 3., 4.]);
        let o = op("constant", 18, vec![]);
        let y = run(o.as_ref(), &x, Some(&[1, 2]), None, Some(&[-1])).unwrap();
        assert_eq!(y.shape(), &[2, 5]);
        assert_eq!(y.f32s().unwrap(), &[0., 1., 2., 0., 0., 0., 3., 4., 0., 0.]);
        let y = run(o.as_ref(), &x, Some(&[1, 0, 0, 1]), None, Some(&[1, 0])).unwrap();
        assert_eq!(y.shape(), &[3, 3]);
        assert_eq!(y.f32s().unwrap(), &[0., 1., 2., 0., 3., 4., 0., 0., 0.]);
    }

    #[test]
    fn attribute_pads_opset2() {
        let x = Tensor::from_f32(vec![2], vec![1., 2.]);
        let o = op(
            "constant",
            2,
            vec![
                ("pads", AttrValue::Ints(vec![1, 2])),
                ("value", AttrValue::Float(-1.5)),
            ],
        );
        let y = run(o.as_ref(), &x, None, None, None).unwrap();
        assert_eq!(y.f32s().unwrap(), &[-1.5, 1., 2., -1.5, -1.5]);
        let o = op("edge", 1, vec![("paddings", AttrValue::Ints(vec![1, 0]))]);
        assert_eq!(
            run(o.as_ref(), &x, None, None, None)
                .unwrap()
                .f32s()
                .unwrap(),
            &[1., 1., 2.]
        );
    }

    #[test]
    fn int_and_bool_data() {
        let x = Tensor::from_i64(vec![3], vec![1, 2, 3]);
        let c = Tensor::from_i64(vec![], vec![-1]);
        let y = run(
            op("constant", 13, vec![]).as_ref(),
            &x,
            Some(&[1, 1]),
            Some(&c),
            None,
        )
        .unwrap();
        assert_eq!(y.i64s().unwrap(), &[-1, 1, 2, 3, -1]);
        assert_eq!(y.dtype(), DType::I64);
        let xi32 = Tensor::from_int(DType::I32, vec![2], vec![4, 5]);
        let y = run(
            op("wrap", 19, vec![]).as_ref(),
            &xi32,
            Some(&[1, 1]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(y.i64s().unwrap(), &[5, 4, 5, 4]);
        assert_eq!(y.dtype(), DType::I32);
        let b = Tensor::from_bool(vec![2], vec![true, false]);
        let y = run(
            op("constant", 13, vec![]).as_ref(),
            &b,
            Some(&[0, 1]),
            None,
            None,
        )
        .unwrap();
        assert_eq!(y.bools().unwrap(), &[true, false, false]);
    }

    #[test]
    fn large_parallel() {
        // [1, 8, 64, 64] padded by 1 on H and W, constant and reflect
        let n = 8 * 64 * 64;
        let v: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let x = Tensor::from_f32(vec![1, 8, 64, 64], v.clone());
        for mode in ["constant", "reflect", "edge"] {
            let y = run(
                op(mode, 13, vec![]).as_ref(),
                &x,
                Some(&[0, 0, 1, 1, 0, 0, 1, 1]),
                None,
                None,
            )
            .unwrap();
            assert_eq!(y.shape(), &[1, 8, 66, 66]);
            let ys = y.f32s().unwrap();
            for c in [0, 7] {
                for (h, w) in [(0, 0), (1, 1), (33, 65), (65, 20)] {
                    let map = |i: i64| -> Option<usize> {
                        let j = i - 1;
                        match mode {
                            "constant" => (0..64).contains(&j).then_some(j as usize),
                            "reflect" => Some(if j < 0 {
                                1
                            } else if j > 63 {
                                62
                            } else {
                                j as usize
                            }),
                            _ => Some(j.clamp(0, 63) as usize),
                        }
                    };
                    let want = match (map(h), map(w)) {
                        (Some(a), Some(b)) => v[c * 4096 + a * 64 + b],
                        _ => 0.0,
                    };
                    assert_eq!(
                        ys[c * 66 * 66 + h as usize * 66 + w as usize],
                        want,
                        "{mode} {c} {h} {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn errors() {
        let x = v4();
        let o = op("constant", 13, vec![]);
        assert!(run(o.as_ref(), &x, Some(&[1]), None, None).is_err());
        assert!(run(o.as_ref(), &x, Some(&[-3, -2]), None, None).is_err());
        assert!(run(
            op("edge", 13, vec![]).as_ref(),
            &x,
            Some(&[-4, 1]),
            None,
            None
        )
        .is_err());
        assert!(run(
            op("reflect", 13, vec![]).as_ref(),
            &x,
            Some(&[-4, 1]),
            None,
            None
        )
        .is_err());
        assert!(run(o.as_ref(), &x, Some(&[1 << 40, 0]), None, None).is_err());
        assert!(run(o.as_ref(), &x, Some(&[i64::MAX, i64::MAX]), None, None).is_err());
        assert!(run(o.as_ref(), &x, Some(&[i64::MIN, 0]), None, None).is_err());
        // pads given but unknown at inference time
        let fx = Fact::new(DType::F32, vec![4]);
        let fp = Fact::new(DType::I64, vec![2]);
        assert!(o.infer(&[Some(&fx), Some(&fp)]).is_err());
        // float pads, mismatched constant type
        let fpads = Tensor::from_f32(vec![2], vec![1., 1.]);
        assert!(o.eval(&[Some(&x), Some(&fpads)]).is_err());
        let ci = Tensor::from_i64(vec![], vec![1]);
        assert!(run(o.as_ref(), &x, Some(&[1, 1]), Some(&ci), None).is_err());
        // axes: duplicate, out of range, pads length mismatch
        let o18 = op("constant", 18, vec![]);
        let x2 = Tensor::from_f32(vec![2, 2], vec![0.; 4]);
        assert!(run(o18.as_ref(), &x2, Some(&[1, 1, 1, 1]), None, Some(&[0, -2])).is_err());
        assert!(run(o18.as_ref(), &x2, Some(&[1, 1]), None, Some(&[2])).is_err());
        assert!(run(o18.as_ref(), &x2, Some(&[1, 1]), None, Some(&[0, 1])).is_err());
        // bad mode, missing attribute pads before opset 11
        let bad = Node::new(
            "p",
            "Pad",
            &["x"],
            &["y"],
            vec![Attribute::new(
                "mode",
                AttrValue::String(b"mirror".to_vec()),
            )],
        );
        assert!(build(&bad, 13).is_err());
        assert!(build(&Node::new("p", "Pad", &["x"], &["y"], vec![]), 2).is_err());
        assert!(o.eval(&[Some(&x), None]).is_err());
    }
}
