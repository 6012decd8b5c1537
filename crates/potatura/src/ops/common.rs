//! Helpers shared by op implementations: input access, broadcasting, axes.

use super::{op_error, Fact};
use crate::error::Result;
use crate::ir::{strides, Tensor};

/// Input `i`, required.
pub fn input<'a>(inputs: &[Option<&'a Tensor>], i: usize) -> Result<&'a Tensor> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| op_error(format!("required input {i} is missing")))
}

/// Fact of input `i`, required.
pub fn fact<'a>(inputs: &[Option<&'a Fact>], i: usize) -> Result<&'a Fact> {
    inputs
        .get(i)
        .copied()
        .flatten()
        .ok_or_else(|| op_error(format!("required input {i} is missing")))
}

/// Optional input `i`.
pub fn opt<'a, T>(inputs: &[Option<&'a T>], i: usize) -> Option<&'a T> {
    inputs.get(i).copied().flatten()
}

/// Value of fact `i` when it is known before running.
pub fn fact_value<'a>(inputs: &[Option<&'a Fact>], i: usize) -> Option<&'a Tensor> {
    opt(inputs, i).and_then(|f| f.value.as_deref())
}

/// Normalises a possibly negative axis for a given rank.
pub fn axis(a: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    let b = if a < 0 { a + r } else { a };
    if b < 0 || b >= r.max(1) {
        return Err(op_error(format!(
            "axis {a} is out of range for rank {rank}"
        )));
    }
    Ok(b as usize)
}

/// Numpy-style broadcast of shapes.
pub fn broadcast_shapes(shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        let off = rank - s.len();
        for (i, &d) in s.iter().enumerate() {
            let o = &mut out[off + i];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(op_error(format!("shapes {shapes:?} do not broadcast")));
            }
        }
    }
    Ok(out)
}

/// For each output element of `out_shape`, the flat index into a tensor of
/// `in_shape` broadcast to it. Used by broadcasting ops on their slow path.
pub fn broadcast_index_map(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let rank = out_shape.len();
    let off = rank - in_shape.len();
    let in_strides = strides(in_shape);
    // Effective stride per output axis (0 where broadcast).
    let eff: Vec<usize> = (0..rank)
        .map(|i| {
            if i < off || in_shape[i - off] == 1 {
                0
            } else {
                in_strides[i - off]
            }
        })
        .collect();
    let n: usize = out_shape.iter().product();
    let mut map = Vec::with_capacity(n);
    let mut idx = vec![0usize; rank];
    let mut cur = 0usize;
    for _ in 0..n {
        map.push(cur);
        // Increment the multi-index.
        for ax in (0..rank).rev() {
            idx[ax] += 1;
            cur += eff[ax];
            if idx[ax] < out_shape[ax] {
                break;
            }
            cur -= eff[ax] * idx[ax];
            idx[ax] = 0;
        }
    }
    map
}

/// Elements above which element-wise loops run in parallel.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// Writes `v` to every element of `o` and returns it, now initialised.
pub fn fill_uninit(o: &mut [std::mem::MaybeUninit<f32>], v: f32) -> &mut [f32] {
    o.iter_mut().for_each(|x| {
        x.write(v);
    });
    // SAFETY: every element was just written, and `MaybeUninit<f32>` has
    // the layout of `f32`.
    unsafe { &mut *(o as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) }
}

/// `n` values built chunk by chunk: each chunk of `chunk` values is zeroed
/// and at once handed to `f(start, chunk)`, while it is in cache (rather
/// than after a zeroing pass over the whole vector). Chunks run in
/// parallel when `par`.
pub fn zeroed_chunks(
    n: usize,
    chunk: usize,
    par: bool,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let fill = |start: usize, o: &mut [std::mem::MaybeUninit<f32>]| f(start, fill_uninit(o, 0.0));
    // SAFETY: `fill` initialises every element of its chunk.
    unsafe { super::pool::build_vec(n, chunk, par, fill) }
}

/// `n` zeros, written by all threads when `n` is large: the zeroing of
/// big activation and gradient buffers is otherwise a serial pass that
/// leaves the other cores idle.
pub fn par_zeros(n: usize) -> Vec<f32> {
    use rayon::prelude::*;
    const CHUNK: usize = 1 << 16;
    if n < 4 * CHUNK {
        return vec![0.0; n];
    }
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .for_each(|c| {
            c.iter_mut().for_each(|x| {
                x.write(0.0);
            })
        });
    // SAFETY: all `n` values were just initialised.
    unsafe { v.set_len(n) };
    v
}
