//! Integration tests of the library, built as one binary.

mod common;
mod inspect;
mod oracle;
mod prune;
mod roundtrip;
mod sparse;
mod train;
