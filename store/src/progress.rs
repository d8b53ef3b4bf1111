//! Progress bars on stderr, only when asked for (the CLI asks when stderr is a terminal).

use indicatif::{ProgressBar, ProgressStyle};

pub fn bar(enabled: bool, total: u64, msg: &str) -> Option<ProgressBar> {
    if !enabled {
        return None;
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg.to_string());
    Some(pb)
}

pub fn inc(pb: &Option<ProgressBar>, n: u64) {
    if let Some(p) = pb {
        p.inc(n);
    }
}

pub fn finish(pb: Option<ProgressBar>) {
    if let Some(p) = pb {
        p.finish_and_clear();
    }
}
