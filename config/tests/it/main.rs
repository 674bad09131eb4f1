//! The configuration crate's integration tests, in one binary.

mod documented;
mod parse;
