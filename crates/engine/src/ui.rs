//! Terminal output of a run: an overall bar (stages done / total, ETA) and one line per running
//! stage (a spinner, or a bar with ETA once the stage reports its length). When stderr is not a
//! terminal, plain lines are printed instead.

use crate::stage::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

pub struct Ui {
    mp: MultiProgress,
    overall: ProgressBar,
    live: bool,
    quiet: bool,
}

impl Ui {
    /// `quiet`: no per-stage lines (errors are still printed).
    pub fn new(total: u64, quiet: bool) -> Ui {
        let live = !quiet && std::io::stderr().is_terminal();
        let mp = MultiProgress::with_draw_target(if live {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let overall = mp.add(ProgressBar::new(total));
        overall.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {pos}/{len} stages  {elapsed_precise}  ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        overall.set_prefix("edge-eval");
        if live {
            overall.enable_steady_tick(Duration::from_millis(200));
        }
        Ui {
            mp,
            overall,
            live,
            quiet,
        }
    }

    pub fn line(&self, text: &str) {
        if self.live {
            let _ = self.mp.println(text);
        } else if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// Always shown (errors).
    pub fn error(&self, text: &str) {
        if self.live {
            let _ = self.mp.println(text);
        } else {
            eprintln!("{text}");
        }
    }

    pub fn stage_started(&self, id: &str) -> Arc<StageBar> {
        let bar = self.mp.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix} {elapsed} {msg}")
                .expect("valid template"),
        );
        bar.set_prefix(id.to_string());
        if self.live {
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Arc::new(StageBar { bar })
    }

    pub fn stage_done(&self, bar: Option<Arc<StageBar>>) {
        if let Some(b) = bar {
            b.bar.finish_and_clear();
            self.mp.remove(&b.bar);
        }
        self.overall.inc(1);
    }

    pub fn finish(&self) {
        self.overall.finish_and_clear();
    }
}

pub struct StageBar {
    bar: ProgressBar,
}

impl Progress for StageBar {
    fn set_length(&self, n: u64) {
        if self.bar.length() != Some(n) {
            self.bar.set_length(n);
            self.bar.set_style(
                ProgressStyle::with_template(
                    "  {spinner} {prefix} [{bar:25}] {percent:>3}% ETA {eta} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
        }
    }
    fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }
    fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}
