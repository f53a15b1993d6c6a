//! Per-phase latency samples and their summaries (median, p90).

use std::time::Duration;

/// Lifecycle phases timed in every iteration, in order.
pub const PHASES: [&str; 4] = ["create", "start", "wait", "delete"];

/// The phase times of one iteration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Iteration {
    pub phases: [Duration; 4],
}

impl Iteration {
    /// Wall time from "request create" to "deleted".
    pub fn total(&self) -> Duration {
        self.phases.iter().sum()
    }
}

/// Samples of one runtime.
#[derive(Debug, Default)]
pub struct Samples {
    pub iterations: Vec<Iteration>,
}

/// Nearest-rank percentile `p` (0..=100) of sorted `v`, in milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median, p90, mean, min and max of a series, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub p90: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(values: impl IntoIterator<Item = Duration>) -> Self {
        let mut v: Vec<f64> = values.into_iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let mean = if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        };
        Self {
            median: percentile(&v, 50.0),
            p90: percentile(&v, 90.0),
            mean,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

impl Samples {
    pub fn total(&self) -> Summary {
        Summary::of(self.iterations.iter().map(Iteration::total))
    }

    pub fn phase(&self, i: usize) -> Summary {
        Summary::of(self.iterations.iter().map(|it| it.phases[i]))
    }
}
