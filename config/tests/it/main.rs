//! The configuration crate's integration tests, in one binary.

mod cc_relay;
mod documented;
mod parse;
