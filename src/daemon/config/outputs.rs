//! The `[[output]]` tables (where events go) and `[outbox]` (the default bound on the events kept
//! for an output that is down). Each output's own fields are checked by
//! `crate::daemon::output::Outputs`; this fills in what comes from the rest of the file.

use std::path::Path;

use toml::Spanned;

use super::Ctx;
use super::raw::RawOutbox;
use crate::daemon::output::{OutputConfig, Outputs};
use clipfilter::error::Result;

/// Validates the outputs as written, with `[outbox]`'s default filled in; `None` when one is
/// unusable (its problems are recorded).
pub(super) fn outputs(
    cx: &Ctx<'_>,
    outbox: &RawOutbox,
    raw: &[Option<Spanned<OutputConfig>>],
) -> Option<(Vec<OutputConfig>, Outputs)> {
    let default_pending = cx.keep(max_pending(cx, outbox));
    let configs = raw
        .iter()
        .map(|o| {
            o.as_ref()
                .map(|o| output(cx, o.get_ref(), default_pending.flatten()))
        })
        .collect::<Option<Vec<OutputConfig>>>()?;
    let outputs = cx.keep(Outputs::new(cx.path, configs.clone()))?;
    default_pending?;
    Some((configs, outputs))
}

/// `[outbox] max_pending`.
fn max_pending(cx: &Ctx<'_>, raw: &RawOutbox) -> Result<Option<u64>> {
    match &raw.max_pending {
        Some(n) if *n.get_ref() == 0 => {
            Err(cx.err(Some(n.span()), "outbox.max_pending", "must be at least 1"))
        }
        Some(n) => Ok(Some(*n.get_ref())),
        None => Ok(None),
    }
}

/// One output with the outbox default and its file path resolved.
fn output(cx: &Ctx<'_>, raw: &OutputConfig, default_pending: Option<u64>) -> OutputConfig {
    let mut o = raw.clone();
    if let Some(n) = default_pending {
        let slot = match &mut o {
            OutputConfig::Jsonl(c) => &mut c.max_pending,
            OutputConfig::Webhook(c) => &mut c.max_pending,
            OutputConfig::Mqtt(c) => &mut c.max_pending,
            OutputConfig::Nats(c) => &mut c.max_pending,
        };
        slot.get_or_insert(n);
    }
    if let OutputConfig::Jsonl(j) = &mut o
        && j.path != Path::new("-")
    {
        j.path = cx.resolve(&j.path);
    }
    o
}
