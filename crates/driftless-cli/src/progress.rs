//! Progress bars: drawn on standard error, only when it is a terminal, without colour.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::Duration;

fn target() -> ProgressDrawTarget {
    if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A bar over `len` bytes.
pub fn bytes(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), target());
    bar.set_style(style("{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)"));
    bar.set_message(message.to_string());
    bar
}

/// A bar over `len` lines.
pub fn lines(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), target());
    bar.set_style(style("{msg} [{bar:30}] {human_pos}/{human_len} lines ({elapsed})"));
    bar.set_message(message.to_string());
    bar
}

/// A spinner counting lines of unknown total.
pub fn line_spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target());
    bar.set_style(style("{spinner} {msg} {human_pos} lines ({elapsed})"));
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A spinner for work of unknown length.
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, target());
    bar.set_style(style("{spinner} {msg} ({elapsed})"));
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
