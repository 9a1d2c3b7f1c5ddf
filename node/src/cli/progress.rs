//! Progress bars for long commands, drawn on standard error only when it is a
//! terminal. Logs, CI output and `helm test` pods get nothing: a bar redrawn
//! with `\r` is noise in a file.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

/// Whether bars are drawn at all.
pub fn enabled() -> bool {
    std::io::stderr().is_terminal()
}

/// A byte-count bar: with `total` a bar and percentage, without one a
/// running count. Hidden unless standard error is a terminal.
pub fn bytes(total: Option<u64>, what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{msg} {spinner} {bytes} {bytes_per_sec}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A step counter (`3/5 starting edge-1`). Hidden unless standard error is a
/// terminal.
pub fn steps(total: u64, what: &str) -> ProgressBar {
    if !enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {prefix} {pos}/{len} {msg}") {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_owned());
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
