//! How a layer waiting for another pull shows: its own progress line saying
//! "waiting for another pull (pid N): sha256:…" (distinct from a fetching layer's bytes
//! and rate), and once per layer the caller's [`WaitHook`] (`-v` prints it on stderr).

use std::collections::HashMap;
use std::sync::Mutex;

use super::LayerDesc;

pub(crate) struct Waiting {
    progress: Option<indicatif::MultiProgress>,
    hook: Option<WaitHook>,
    bars: Mutex<HashMap<usize, indicatif::ProgressBar>>,
}

/// The words every waiting layer shows.
pub fn waiting_line(digest: &str, pid: Option<u32>) -> String {
    match pid {
        Some(p) => format!("waiting for another pull (pid {p}): {digest}"),
        None => format!("waiting for another pull: {digest}"),
    }
}

impl Waiting {
    pub(crate) fn new(progress: Option<&indicatif::MultiProgress>, hook: Option<WaitHook>) -> Self {
        Waiting {
            progress: progress.cloned(),
            hook,
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// Layer `i` found its claim taken (again).
    pub(crate) fn busy(&self, i: usize, layer: &LayerDesc, pid: Option<u32>) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = bars.get(&i) {
            bar.set_message(waiting_line(&layer.digest, pid));
            return;
        }
        if let Some(h) = &self.hook {
            (h.0)(&layer.digest, pid);
        }
        let bar = match &self.progress {
            Some(mp) => {
                let pb = mp.add(indicatif::ProgressBar::new_spinner());
                pb.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg}")
                        .expect("valid template"),
                );
                pb.enable_steady_tick(std::time::Duration::from_millis(200));
                pb
            }
            None => indicatif::ProgressBar::hidden(),
        };
        bar.set_message(waiting_line(&layer.digest, pid));
        bars.insert(i, bar);
    }

    /// Layer `i` is done (or taken up by this pull): its waiting line goes.
    pub(crate) fn done(&self, i: usize) {
        let bar = self
            .bars
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&i);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    }
}

/// A callback for layers that wait for another pull: `(blob digest, holder's pid)`.
#[derive(Clone)]
pub struct WaitHook(pub std::sync::Arc<WaitFn>);

/// See [`WaitHook`].
pub type WaitFn = dyn Fn(&str, Option<u32>) + Send + Sync;

impl std::fmt::Debug for WaitHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WaitHook")
    }
}
