//! How channels flow through an op: the vocabulary each op uses, in its own
//! file, to declare its channel mapping ([`Op::channels`](super::Op::channels))
//! and to rewrite its attributes when channels are removed
//! ([`Op::prune`](super::Op::prune)).
//!
//! Every computed value may carry one *channel axis*. A channel is one
//! index along that axis. An op declares, for each computed input, whether
//! it reads that axis ([`Use::Axis`]) or only the shape ([`Use::Shape`]);
//! which axis of each output carries channels; which input and output
//! channels are *coupled* (must be removed together, [`Link`]); which
//! constant inputs are sliced along which axis when channels go
//! ([`WeightAxis`]); and which ports scale its MACs. An op that returns
//! `None` from `channels`, or leaves a channel-carrying input without a
//! [`Use`], freezes every channel it touches: nothing is guessed.

use serde::Serialize;

use super::Fact;
use crate::error::Result;
use crate::ir::{Attribute, Tensor};

/// One side of an op: its input `i` or its output `o`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Port {
    /// Input by position.
    In(usize),
    /// Output by position.
    Out(usize),
}

/// How an op reads a computed input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// Its channels along this axis (which must be the value's channel axis).
    Axis(usize),
    /// Only its shape or values position-wise with no channel meaning
    /// (`Shape`); removing channels cannot break this op.
    Shape,
}

/// How the channels of two ports correspond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pairs {
    /// Channel `k` of `a` is channel `k` of `b`.
    Same,
    /// Channel `k` of `a` is channel `k + offset` of `b`.
    Offset(usize),
    /// Channels of `a` in blocks of `a_per` and of `b` in blocks of
    /// `b_per`: block `j` of `a` and block `j` of `b` are one unit
    /// (grouped convolution, a flattened or head-split channel axis).
    Blocks {
        /// Channels of `a` per block.
        a_per: usize,
        /// Channels of `b` per block.
        b_per: usize,
    },
}

/// Channels of two ports that must be removed together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// One port.
    pub a: Port,
    /// The other port.
    pub b: Port,
    /// Which channels of `a` go with which of `b`.
    pub pairs: Pairs,
}

impl Link {
    /// Channel `k` of `a` is channel `k` of `b`.
    pub fn same(a: Port, b: Port) -> Link {
        Link {
            a,
            b,
            pairs: Pairs::Same,
        }
    }
}

/// A constant input whose `axis` indexes the channels of `port`: removing
/// channel `k` of the port removes index `k` of that axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightAxis {
    /// The port whose channels index the constant.
    pub port: Port,
    /// The constant input.
    pub input: usize,
    /// Its axis.
    pub axis: usize,
}

/// An op's channel declaration at given input facts.
#[derive(Clone, Debug, Default)]
pub struct ChanMap {
    /// Per input: how the op reads it. Constant inputs need nothing here; a
    /// computed input that carries channels and has no `Use` is frozen.
    pub uses: Vec<Option<Use>>,
    /// Per output: its channel axis, if any.
    pub out_axes: Vec<Option<usize>>,
    /// Coupled channels.
    pub links: Vec<Link>,
    /// Constant inputs sliced with the channels.
    pub weights: Vec<WeightAxis>,
    /// The op's MACs are proportional to the kept fraction of each of these
    /// ports' channels.
    pub macs: Vec<Port>,
}

impl ChanMap {
    /// A map for `n_in` inputs and `n_out` outputs, with nothing declared.
    pub fn new(n_in: usize, n_out: usize) -> ChanMap {
        ChanMap {
            uses: vec![None; n_in],
            out_axes: vec![None; n_out],
            ..ChanMap::default()
        }
    }
}

/// What an op sees when declaring its channel mapping.
#[derive(Clone, Copy, Debug)]
pub struct ChanCx<'a> {
    /// Input facts (`None` for omitted optional inputs); constants carry
    /// their value.
    pub inputs: &'a [Option<&'a Fact>],
    /// Channel axis of each input, as its producer declared it.
    pub axes: &'a [Option<usize>],
    /// Per input: a constant that does not depend on the input shapes (an
    /// initializer, a `Constant`, or computed from those only), which
    /// pruning can therefore rewrite.
    pub fixed: &'a [bool],
    /// Output facts.
    pub outputs: &'a [Fact],
}

impl ChanCx<'_> {
    /// The fact of input `i`, if given.
    pub fn fact(&self, i: usize) -> Option<&Fact> {
        self.inputs.get(i).copied().flatten()
    }
    /// True when input `i` is given and its value is known before running.
    pub fn is_const(&self, i: usize) -> bool {
        self.fact(i).is_some_and(|f| f.value.is_some())
    }
    /// The channel axis of input `i`, when it is computed and carries one.
    pub fn axis(&self, i: usize) -> Option<usize> {
        if self.is_const(i) {
            None
        } else {
            self.axes.get(i).copied().flatten()
        }
    }
    /// True when input `i` is a rewritable constant (see [`ChanCx::fixed`]).
    pub fn is_fixed(&self, i: usize) -> bool {
        self.fixed.get(i).copied().unwrap_or(false)
    }
    /// Integer values of constant input `i`.
    pub fn ints(&self, i: usize) -> Option<Vec<i64>> {
        self.fact(i)?.value.as_ref().map(|v| v.to_i64_vec())
    }
    /// Shape of input `i` (empty when absent).
    pub fn shape(&self, i: usize) -> &[usize] {
        self.fact(i).map(|f| f.shape.as_slice()).unwrap_or(&[])
    }
    /// Shape of output `o` (empty when absent).
    pub fn out_shape(&self, o: usize) -> &[usize] {
        self.outputs
            .get(o)
            .map(|f| f.shape.as_slice())
            .unwrap_or(&[])
    }

    /// The common element-wise map: every computed input that carries
    /// channels is read on its axis, aligned (numpy broadcasting) to one
    /// output axis; inputs with that axis of size 1 broadcast and are not
    /// linked; constant inputs whose aligned axis has the channel count are
    /// sliced with the output's channels. `None` when computed inputs put
    /// their channels on different output axes.
    pub fn elementwise(&self, n_out: usize) -> Option<ChanMap> {
        let n_in = self.inputs.len();
        let mut m = ChanMap::new(n_in, n_out);
        let out_rank = self.out_shape(0).len();
        let mut out_axis: Option<usize> = None;
        for i in 0..n_in {
            let Some(a) = self.axis(i) else { continue };
            let aligned = a + out_rank - self.shape(i).len();
            match out_axis {
                None => out_axis = Some(aligned),
                Some(o) if o != aligned => return None,
                _ => {}
            }
        }
        let Some(oa) = out_axis else {
            // Nothing computed carries channels: the outputs carry none.
            for i in 0..n_in {
                if !self.is_const(i) && self.fact(i).is_some() {
                    m.uses[i] = Some(Use::Shape);
                }
            }
            return Some(m);
        };
        let c = self.out_shape(0)[oa];
        for i in 0..n_in {
            let Some(f) = self.fact(i) else { continue };
            let r = f.shape.len();
            let local = (oa + r).checked_sub(out_rank);
            let size = local.map(|l| f.shape[l]).unwrap_or(1);
            if self.is_const(i) {
                if let Some(l) = local.filter(|_| size == c && c > 1) {
                    m.weights.push(WeightAxis {
                        port: Port::Out(0),
                        input: i,
                        axis: l,
                    });
                }
                continue;
            }
            match local {
                Some(l) if size == c => {
                    if self.axis(i).is_some_and(|a| a != l) {
                        return None;
                    }
                    // A computed input without channel information gets
                    // frozen channels on this axis (by the analysis).
                    m.uses[i] = Some(Use::Axis(l));
                    for o in 0..n_out {
                        m.links.push(Link::same(Port::In(i), Port::Out(o)));
                    }
                }
                // Broadcast along the channel axis: reads no channel.
                _ if size == 1 => m.uses[i] = Some(Use::Shape),
                _ => return None,
            }
        }
        for o in m.out_axes.iter_mut() {
            *o = Some(oa);
        }
        Some(m)
    }

    /// Input 0's channels become output 0's channels on `out_axis`,
    /// element-wise, provided the channel count is unchanged there (pooling
    /// over other axes, padding other axes, reducing other axes).
    pub fn keep_channels(&self, out_axis: usize) -> Option<ChanMap> {
        let mut m = ChanMap::new(self.inputs.len(), self.outputs.len().max(1));
        for i in 1..self.inputs.len() {
            if self.fact(i).is_some() {
                m.uses[i] = Some(Use::Shape);
            }
        }
        let Some(a) = self.axis(0) else {
            m.uses[0] = Some(Use::Shape);
            return Some(m);
        };
        if self.out_shape(0).get(out_axis) != Some(&self.shape(0)[a]) {
            return None;
        }
        m.uses[0] = Some(Use::Axis(a));
        m.out_axes[0] = Some(out_axis);
        m.links.push(Link::same(Port::In(0), Port::Out(0)));
        Some(m)
    }

    /// A unary op that keeps every element where it is (activations,
    /// BatchNorm-like ops): input 0's channels are output 0's.
    pub fn passthrough(&self) -> ChanMap {
        let mut m = ChanMap::new(self.inputs.len(), self.outputs.len().max(1));
        match self.axis(0) {
            Some(a) => {
                m.uses[0] = Some(Use::Axis(a));
                m.out_axes[0] = Some(a);
                m.links.push(Link::same(Port::In(0), Port::Out(0)));
            }
            None => m.uses[0] = Some(Use::Shape),
        }
        m
    }
}

/// What an op can do to itself when channels are removed: read which
/// channels stay on each port and replace constant inputs or attributes.
/// Constants declared in [`ChanMap::weights`] are sliced before
/// [`Op::prune`](super::Op::prune) runs.
pub trait PruneCx {
    /// Kept channel indices (ascending) of a port whose channels changed;
    /// `None` when the port keeps all of its channels or carries none.
    fn kept(&self, port: Port) -> Option<&[usize]>;
    /// Channel axis of a port, if it carries channels.
    fn axis(&self, port: Port) -> Option<usize>;
    /// Original channel count of a port, if it carries channels.
    fn channels(&self, port: Port) -> Option<usize>;
    /// The original fact of input `i`.
    fn input_fact(&self, i: usize) -> Option<&Fact>;
    /// True when input `i` is a constant that does not depend on the input
    /// shapes (an initializer, a `Constant`, or computed from those only),
    /// so it can be rewritten.
    fn is_weight(&self, i: usize) -> bool;
    /// Replaces constant input `i` with `t` (un-shared: other readers keep
    /// the old value), or gives an omitted optional input this value.
    fn set_input(&mut self, i: usize, t: Tensor) -> Result<()>;
    /// Sets (adds or replaces) an attribute of the node.
    fn set_attr(&mut self, a: Attribute);
    /// Removes an attribute of the node, if present.
    fn remove_attr(&mut self, name: &str);
}

/// Number of kept channels of `port`, or its original count when unchanged.
pub fn kept_len(cx: &dyn PruneCx, port: Port) -> Option<usize> {
    cx.kept(port).map(|k| k.len()).or_else(|| cx.channels(port))
}

/// The map of an op that only changes how elements are grouped into axes
/// (Reshape, Flatten, Squeeze, Unsqueeze) from input 0 to output 0. The
/// channel axis of the input (size `c`, `pre` elements before it, `post`
/// after) may stay an axis of its own, be merged with the axes after it
/// (`[N, C, H, W] -> [N, C*H*W]`: channel `k` becomes the block of
/// `H*W` features `k*H*W..`), or be split into a leading axis and others
/// (`[B, S, 384] -> [B, S, 12, 32]`: the 12 heads become the channels, each
/// a block of 32 input channels). Anything else is `None` (frozen).
pub fn regroup_map(cx: &ChanCx, n_in: usize) -> Option<ChanMap> {
    let mut m = ChanMap::new(n_in, 1);
    for i in 1..n_in {
        if cx.fact(i).is_some() {
            m.uses[i] = Some(Use::Shape);
        }
    }
    let Some(a) = cx.axis(0) else {
        m.uses[0] = Some(Use::Shape);
        return Some(m);
    };
    let (i_sh, o_sh) = (cx.shape(0), cx.out_shape(0));
    let prod = |v: &[usize]| v.iter().product::<usize>();
    let (c, pre, post) = (i_sh[a], prod(&i_sh[..a]), prod(&i_sh[a + 1..]));
    m.uses[0] = Some(Use::Axis(a));
    for b in 0..o_sh.len() {
        if prod(&o_sh[..b]) != pre || o_sh[b] == 1 && c != 1 {
            continue;
        }
        let rest = prod(&o_sh[b + 1..]);
        let pairs = if o_sh[b] == c && rest == post {
            Pairs::Same
        } else if o_sh[b] > c && o_sh[b] % c == 0 && rest * (o_sh[b] / c) == post {
            // Merged with the following axes: they must be whole axes.
            let f = o_sh[b] / c;
            let mut acc = 1;
            let whole = i_sh[a + 1..].iter().any(|&d| {
                acc *= d;
                acc == f
            });
            if !whole {
                return None;
            }
            Pairs::Blocks { a_per: 1, b_per: f }
        } else if o_sh[b] < c && c % o_sh[b] == 0 {
            let q = c / o_sh[b];
            // The axes after b that make up q, then the untouched rest.
            let mut acc = 1;
            let mut end = None;
            for (j, &d) in o_sh[b + 1..].iter().enumerate() {
                acc *= d;
                if acc == q {
                    end = Some(b + 2 + j);
                    break;
                }
            }
            match end {
                Some(e) if prod(&o_sh[e..]) == post => Pairs::Blocks { a_per: q, b_per: 1 },
                _ => return None,
            }
        } else {
            continue;
        };
        m.out_axes[0] = Some(b);
        m.links.push(Link {
            a: Port::In(0),
            b: Port::Out(0),
            pairs,
        });
        return Some(m);
    }
    None
}
