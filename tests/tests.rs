//! The integration tests: one binary, one module per theme.

mod daemon_http;
mod delivery;
mod sd_notify;
