//! The integration tests: one binary, themed modules.

mod util;

mod calibrate;
mod console;
mod crops;
mod daemon;
mod daemon_config;
mod daemon_http;
mod delivery;
mod element;
mod engine;
mod history;
mod model_fetch;
mod nats;
mod remote;
mod sd_notify;
mod worker;
