//! The integration tests: one binary, themed modules.

mod util;

mod engine;
mod model_fetch;
mod worker;
