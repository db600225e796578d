//! The integration tests: one binary, one module per theme.

mod model_fetch;
