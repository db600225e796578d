//! `clipfilterd` subcommands.

pub mod model_fetch;
