//! Download progress: an `indicatif` bar per file on a terminal, `tracing` lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, ProgressBar, ProgressStyle};
use tracing::{debug, info, warn};

/// Files smaller than this get no bar or log lines of their own (only the summary counts them).
const LOG_MIN_SIZE: u64 = 1 << 20;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProgressMode {
    /// A bar on stderr (bytes, rate, ETA).
    Bar,
    /// An info line at the start, at every 10 %, and at the end (for files of 1 MiB or more).
    Log,
    /// Start and end at debug level only.
    Quiet,
}

impl ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise; quiet when progress is off.
    pub(super) fn detect(progress: bool) -> Self {
        match (progress, std::io::stderr().is_terminal()) {
            (false, _) => ProgressMode::Quiet,
            (true, true) => ProgressMode::Bar,
            (true, false) => ProgressMode::Log,
        }
    }
}

/// Progress of one file's download, across resumed attempts.
pub(super) struct FileProgress {
    name: String,
    size: u64,
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    started: Instant,
    /// Bytes already there when this process started on the file (not counted in the rate).
    resumed_from: u64,
    position: u64,
    /// Next percentage to log, in Log mode.
    next_percent: u64,
}

impl FileProgress {
    /// Starts showing the download of `name` (`size` bytes), `offset` of which are already on disk.
    pub(super) fn start(mode: ProgressMode, name: &str, size: u64, offset: u64) -> Self {
        let mode = if size < LOG_MIN_SIZE {
            ProgressMode::Quiet
        } else {
            mode
        };
        let bar = (mode == ProgressMode::Bar).then(|| {
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let bar = ProgressBar::new(size).with_style(style).with_message(name.to_owned());
            bar.set_position(offset);
            bar.reset_eta();
            bar
        });
        match (mode, offset) {
            (ProgressMode::Bar, _) => {}
            (ProgressMode::Log, 0) => info!(
                file = name,
                size,
                "downloading {name} ({})",
                BinaryBytes(size)
            ),
            (ProgressMode::Log, _) => info!(
                file = name,
                size,
                offset,
                "resuming {name} at {} of {}",
                BinaryBytes(offset),
                BinaryBytes(size)
            ),
            (ProgressMode::Quiet, _) => debug!(file = name, size, offset, "downloading"),
        }
        let mut progress = FileProgress {
            name: name.to_owned(),
            size,
            mode,
            bar,
            started: Instant::now(),
            resumed_from: offset,
            position: offset,
            next_percent: 10,
        };
        progress.skip_passed_percents();
        progress
    }

    /// The download restarted from `offset` (a resumed or restarted request).
    pub(super) fn set_position(&mut self, offset: u64) {
        self.position = offset;
        if offset < self.resumed_from {
            self.resumed_from = offset;
        }
        if let Some(bar) = &self.bar {
            bar.set_position(offset);
        }
        self.skip_passed_percents();
    }

    /// `n` more bytes were written.
    pub(super) fn advance(&mut self, n: u64) {
        self.position += n;
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
        if self.mode == ProgressMode::Log && self.size > 0 {
            let percent = self.position.saturating_mul(100) / self.size;
            if percent >= self.next_percent && percent < 100 {
                info!(
                    file = %self.name,
                    "{}: {percent}% ({} of {}, {}/s)",
                    self.name,
                    BinaryBytes(self.position),
                    BinaryBytes(self.size),
                    BinaryBytes(self.rate())
                );
                self.skip_passed_percents();
            }
        }
    }

    /// Reports an interrupted transfer that will be resumed after `delay`, above the bar.
    pub(super) fn interrupted(&self, error: &dyn std::fmt::Display, delay: Duration) {
        let report = || {
            warn!(
                file = %self.name,
                offset = self.position,
                %error,
                "download interrupted at {} of {} bytes; resuming in {delay:.1?}",
                self.position,
                self.size
            );
        };
        match &self.bar {
            Some(bar) => bar.suspend(report),
            None => report(),
        }
    }

    /// The file is complete and verified.
    pub(super) fn finish(self) {
        let elapsed = self.started.elapsed();
        let fetched = self.size.saturating_sub(self.resumed_from);
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.finish(),
            (None, ProgressMode::Bar | ProgressMode::Log) => info!(
                file = %self.name,
                bytes = fetched,
                "{}: done, {} in {:.1} s ({}/s)",
                self.name,
                BinaryBytes(fetched),
                elapsed.as_secs_f64(),
                BinaryBytes(self.rate())
            ),
            (None, ProgressMode::Quiet) => {
                debug!(file = %self.name, bytes = fetched, ?elapsed, "downloaded")
            }
        }
    }

    /// Leaves the bar of a download that failed where it stopped.
    pub(super) fn abandon(self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }

    fn skip_passed_percents(&mut self) {
        if let Some(percent) = self.position.saturating_mul(100).checked_div(self.size) {
            self.next_percent = (percent / 10 + 1) * 10;
        }
    }

    /// Bytes per second fetched by this process.
    fn rate(&self) -> u64 {
        let secs = self
            .started
            .elapsed()
            .max(Duration::from_millis(1))
            .as_secs_f64();
        (self.position.saturating_sub(self.resumed_from) as f64 / secs) as u64
    }
}
