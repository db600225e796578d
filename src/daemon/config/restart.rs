//! The `[restart]` table: how the supervisor restarts failed and stalled pipelines.

use std::time::Duration;

use toml::Spanned;

use super::Ctx;
use super::raw::RawRestart;
use clipfilter::error::Result;

/// Default first wait before restarting a failed pipeline.
pub const DEFAULT_RESTART_INITIAL: Duration = Duration::from_secs(1);
/// Default longest wait before restarting a failed pipeline.
pub const DEFAULT_RESTART_MAX: Duration = Duration::from_secs(60);
/// Default time without frames after which a running pipeline is restarted.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait before a restart (`initial`, `max`): the supervisor adds it to the clock,
/// which a wait of centuries would overflow.
pub const MAX_RESTART_WAIT: Duration = Duration::from_secs(24 * 3600);

/// The `[restart]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// `None`: never restart a pipeline for lack of frames.
    pub stall_timeout: Option<Duration>,
}

/// Validates `[restart]`, recording every problem.
pub(super) fn restart(cx: &Ctx<'_>, raw: &RawRestart) -> Option<RestartPolicy> {
    let initial = cx.keep(initial(cx, raw));
    let max = initial.and_then(|initial| cx.keep(max(cx, raw, initial)));
    let stall_timeout = cx.keep(stall_timeout(cx, raw));
    Some(RestartPolicy {
        initial: initial?,
        max: max?,
        stall_timeout: stall_timeout?,
    })
}

fn initial(cx: &Ctx<'_>, raw: &RawRestart) -> Result<Duration> {
    let initial = match &raw.initial {
        Some(d) => cx.duration(d, "restart.initial")?,
        None => DEFAULT_RESTART_INITIAL,
    };
    if initial.is_zero() {
        return Err(cx.err(
            raw.initial.as_ref().map(Spanned::span),
            "restart.initial",
            "must be greater than zero",
        ));
    }
    if initial > MAX_RESTART_WAIT {
        return Err(cx.err(
            raw.initial.as_ref().map(Spanned::span),
            "restart.initial",
            "must be at most 24h",
        ));
    }
    Ok(initial)
}

/// `max`, which must not be shorter than `initial`.
fn max(cx: &Ctx<'_>, raw: &RawRestart, initial: Duration) -> Result<Duration> {
    let max = match &raw.max {
        Some(d) => cx.duration(d, "restart.max")?,
        None => DEFAULT_RESTART_MAX.max(initial),
    };
    if max < initial {
        return Err(cx.err(
            raw.max.as_ref().map(Spanned::span),
            "restart.max",
            "must not be shorter than restart.initial",
        ));
    }
    if max > MAX_RESTART_WAIT {
        return Err(cx.err(
            raw.max.as_ref().map(Spanned::span),
            "restart.max",
            "must be at most 24h",
        ));
    }
    Ok(max)
}

fn stall_timeout(cx: &Ctx<'_>, raw: &RawRestart) -> Result<Option<Duration>> {
    match &raw.stall_timeout {
        Some(d) => Ok(Some(cx.duration(d, "restart.stall_timeout")?).filter(|d| !d.is_zero())),
        None => Ok(Some(DEFAULT_STALL_TIMEOUT)),
    }
}
