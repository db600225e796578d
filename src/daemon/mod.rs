//! clipfilterd, the daemon: events, their durable delivery, metrics, health and systemd.
//!
//! The supervisor turns the element's `clipfilter-match` messages into [`event::Event`]s and
//! hands them to [`delivery::Delivery::submit`]; [`metrics::Metrics`] is served by
//! [`http::HttpServer`]; [`notify::Notifier`] talks to systemd.

pub mod backoff;
pub mod check;
pub mod config;
pub mod console;
pub mod delivery;
pub mod duration;
pub mod event;
pub mod history;
pub mod history_api;
pub mod http;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod outbox;
pub mod output;
pub mod paths;
pub mod pipeline;
pub mod reload;
pub mod secret;
pub mod service;
pub mod snapshot;
pub mod source;
pub mod supervisor;
pub mod view;
