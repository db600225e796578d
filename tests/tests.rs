//! The integration tests: one binary, themed modules.

mod util;

mod element;
mod engine;
