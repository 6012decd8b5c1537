//! Data files: `.npy` arrays and MNIST IDX.

pub mod idx;
pub mod npy;
