//! The live progress line: elapsed time, current rate, latency and queue depth, redrawn a few times a second.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::results::TimelinePoint;

/// A live progress bar for one run; draws nothing when disabled or when stderr is not a terminal.
pub struct LiveProgress {
    bar: ProgressBar,
}

impl LiveProgress {
    /// A bar for a run called `name` that is planned to last `planned`.
    pub fn new(enabled: bool, name: &str, planned: Duration) -> LiveProgress {
        let target =
            if enabled { ProgressDrawTarget::stderr_with_hz(5) } else { ProgressDrawTarget::hidden() };
        let bar = ProgressBar::with_draw_target(Some(planned.as_millis().max(1) as u64), target);
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} [{elapsed_precise}] {wide_bar:.cyan/blue} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(name.to_owned());
        LiveProgress { bar }
    }

    /// Shows the latest timeline point at `elapsed` into the run.
    pub fn update(&self, elapsed: Duration, point: &TimelinePoint) {
        self.bar.set_position(elapsed.as_millis() as u64);
        let mut message = format!("{:>8.0} req/s", point.rate_per_s);
        if let (Some(p50), Some(p99)) = (point.latency_p50_ms, point.latency_p99_ms) {
            message.push_str(&format!("  p50 {p50:>7.1} ms  p99 {p99:>7.1} ms"));
        }
        if let Some(backlog) = point.queue_backlog {
            message.push_str(&format!("  queue {backlog:>6}"));
        }
        if point.phase == crate::results::Phase::Drain {
            message.push_str("  (draining)");
        }
        self.bar.set_message(message);
    }

    /// Extends the bar for a phase whose length is not known in advance (the drain).
    pub fn extend(&self, more: Duration) {
        self.bar.set_length(self.bar.position() + more.as_millis().max(1) as u64);
    }

    /// Leaves a final line.
    pub fn finish(&self, summary: &str) {
        self.bar.finish_with_message(summary.to_owned());
    }
}
