//! What `berth sites create` / `berth scale` show while they wait for instances.
//!
//! On a terminal (standard error, where the progress goes) each instance gets a line:
//! a byte progress bar while its image is pulled (the agent reports
//! `pull_done_bytes`/`pull_total_bytes`), a spinner with its state otherwise. Off a
//! terminal (logs, CI, pipes) it prints a plain line whenever something changed, with
//! the byte counts, e.g. `  [  1.2s] web-3kq9z=pulling 4194304/10485760 bytes (40%)`.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use berth_api::rest::{Instance, Site};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress display of one wait.
pub struct DeployProgress {
    start: Instant,
    mode: Mode,
}

enum Mode {
    Plain {
        last: String,
    },
    Bars {
        multi: MultiProgress,
        bars: BTreeMap<String, (ProgressBar, bool)>,
    },
}

/// One instance as a plain-text item: `id=state`, with pull bytes or the message.
pub fn plain_item(i: &Instance) -> String {
    if i.state == "starting" && i.pull_total_bytes > 0 {
        let pct = i.pull_done_bytes.saturating_mul(100) / i.pull_total_bytes;
        format!(
            "{}=pulling {}/{} bytes ({pct}%)",
            i.id, i.pull_done_bytes, i.pull_total_bytes
        )
    } else if i.message.is_empty() || i.message == i.state || i.state != "starting" {
        format!("{}={}", i.id, i.state)
    } else {
        format!("{}={} ({})", i.id, i.state, i.message)
    }
}

impl DeployProgress {
    /// Bars when standard error is a terminal, plain lines otherwise.
    pub fn new() -> Self {
        let tty = std::io::stderr().is_terminal();
        Self::with_bars(tty)
    }

    pub fn with_bars(bars: bool) -> Self {
        let mode = if bars {
            Mode::Bars {
                multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                bars: BTreeMap::new(),
            }
        } else {
            Mode::Plain {
                last: String::new(),
            }
        };
        Self {
            start: Instant::now(),
            mode,
        }
    }

    /// Shows the site's current instance states.
    pub fn update(&mut self, site: &Site) {
        let elapsed = self.start.elapsed().as_secs_f64();
        match &mut self.mode {
            Mode::Plain { last } => {
                let summary = site
                    .instance_states
                    .iter()
                    .map(plain_item)
                    .collect::<Vec<_>>()
                    .join(" ");
                if summary != *last {
                    eprintln!("  [{elapsed:>5.1}s] {summary}");
                    *last = summary;
                }
            }
            Mode::Bars { multi, bars } => {
                for i in &site.instance_states {
                    let (bar, bytes) = bars.entry(i.id.clone()).or_insert_with(|| {
                        let b = multi.add(ProgressBar::new_spinner());
                        b.enable_steady_tick(Duration::from_millis(120));
                        b.set_style(spinner_style());
                        b.set_prefix(i.id.clone());
                        (b, false)
                    });
                    if i.state == "starting" && i.pull_total_bytes > 0 {
                        if !*bytes {
                            bar.set_style(bytes_style());
                            *bytes = true;
                        }
                        bar.set_length(i.pull_total_bytes);
                        bar.set_position(i.pull_done_bytes.min(i.pull_total_bytes));
                    } else {
                        if *bytes {
                            bar.set_style(spinner_style());
                            *bytes = false;
                        }
                        let msg = if i.message.is_empty() || i.message == i.state {
                            i.state.clone()
                        } else {
                            format!("{}: {}", i.state, i.message)
                        };
                        bar.set_message(msg);
                        if matches!(i.state.as_str(), "ready" | "failed") && !bar.is_finished() {
                            bar.finish();
                        }
                    }
                }
            }
        }
    }

    /// Ends the display, leaving the bars' last state on screen.
    pub fn finish(&mut self) {
        if let Mode::Bars { bars, .. } = &mut self.mode {
            for (b, _) in bars.values() {
                if !b.is_finished() {
                    b.abandon();
                }
            }
        }
    }
}

impl Default for DeployProgress {
    fn default() -> Self {
        Self::new()
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner} {prefix:.bold} {msg}")
        .expect("static template is valid")
}

fn bytes_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "  {spinner} {prefix:.bold} pulling [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
    .expect("static template is valid")
    .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(state: &str, message: &str, done: u64, total: u64) -> Instance {
        Instance {
            id: "web-1".into(),
            worker: "w".into(),
            state: state.into(),
            message: message.into(),
            pull_done_bytes: done,
            pull_total_bytes: total,
        }
    }

    #[test]
    fn plain_items() {
        assert_eq!(
            plain_item(&inst("starting", "pulling", 512, 2048)),
            "web-1=pulling 512/2048 bytes (25%)"
        );
        assert_eq!(
            plain_item(&inst("starting", "starting sandbox", 0, 0)),
            "web-1=starting (starting sandbox)"
        );
        assert_eq!(plain_item(&inst("ready", "", 0, 0)), "web-1=ready");
    }
}
