//! Named, timed steps: each prints its name when it starts and its
//! duration when it ends, and the run ends with a table of all of them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

#[derive(Default)]
pub struct Phases {
    done: Vec<(String, Duration, bool)>,
}

impl Phases {
    pub fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        eprintln!("==> {name}");
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        let ok = result.is_ok();
        let verdict = if ok { "done" } else { "FAILED" };
        eprintln!("<== {name}: {verdict} in {}", human(took));
        self.done.push((name.to_string(), took, ok));
        result.with_context(|| format!("phase '{name}'"))
    }

    pub fn summary(&self) {
        eprintln!("---- phases ----");
        let mut total = Duration::ZERO;
        for (name, took, ok) in &self.done {
            let mark = if *ok { "" } else { "  (failed)" };
            eprintln!("  {name:<16} {:>9}{mark}", human(*took));
            total += *took;
        }
        eprintln!("  {:<16} {:>9}", "total", human(total));
    }
}

pub fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1}s")
    } else {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn failed_phase_is_recorded_and_named() {
        let mut phases = Phases::default();
        let err = phases
            .run("boot", || -> Result<()> { anyhow::bail!("no kernel") })
            .unwrap_err();
        assert_eq!(format!("{err:#}"), "phase 'boot': no kernel");
        assert!(!phases.done[0].2);
    }
}
