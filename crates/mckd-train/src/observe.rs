//! Observers of the training loop that every run uses, and the run folder as a checkpoint sink.
//!
//! * [`Progress`]: the progress bar (with ETA) and its message.
//! * [`DivergenceGuard`]: a non-finite loss term, meta loss or state value (the IWV) stops the
//!   run with a message naming the iteration and the term; the last good checkpoint stays.
//! * [`StopOnSignal`]: SIGINT / SIGTERM ask the loop to write a checkpoint and stop.
//! * [`FolderCheckpoints`]: checkpoints in `<run>/checkpoint/`, replaced atomically.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use indicatif::ProgressBar;
use mckd_core::{Method, StateFiles};

use crate::run::{RunError, write_atomic};
use crate::train::{Checkpoint, CheckpointSink, Control, LogRow, LoopState, Observer};

/// Advances a progress bar once per iteration and shows the first loss term.
pub struct Progress<'a> {
    bar: &'a ProgressBar,
    label: String,
}

impl<'a> Progress<'a> {
    /// An observer driving `bar`, its message prefixed by `label`.
    pub fn new(bar: &'a ProgressBar, label: impl Into<String>) -> Self {
        Self {
            bar,
            label: label.into(),
        }
    }
}

impl<M: Method> Observer<M> for Progress<'_> {
    fn on_step(&mut self, row: &LogRow, _: &M) -> Control {
        if let Some(t) = row.terms.first()
            && row.iteration.is_multiple_of(10)
        {
            self.bar.set_message(format!("{} loss {t:.3}", self.label));
        }
        self.bar.inc(1);
        Control::Continue
    }
}

/// Fails the run at the first non-finite loss term, meta loss or state value.
pub struct DivergenceGuard {
    terms: Vec<String>,
    state: Vec<String>,
}

impl DivergenceGuard {
    /// A guard that names the method's terms and state values in its message.
    pub fn new<M: Method>(method: &M) -> Self {
        Self {
            terms: method.term_names(),
            state: method.state_names(),
        }
    }

    /// The message for a row with a non-finite value, or `None`.
    pub fn check(&self, row: &LogRow) -> Option<String> {
        let named = |names: &[String], values: &[f32]| {
            names
                .iter()
                .zip(values)
                .find(|(_, v)| !v.is_finite())
                .map(|(n, v)| format!("{n} = {v}"))
        };
        let what = named(&self.terms, &row.terms)
            .or_else(|| {
                row.meta_loss
                    .filter(|v| !v.is_finite())
                    .map(|v| format!("meta_loss = {v}"))
            })
            .or_else(|| named(&self.state, &row.state))?;
        Some(format!(
            "training diverged at iteration {}: {what} (lower the learning rate; the last good \
             checkpoint is kept)",
            row.iteration
        ))
    }
}

impl<M: Method> Observer<M> for DivergenceGuard {
    fn on_step(&mut self, row: &LogRow, _: &M) -> Control {
        match self.check(row) {
            Some(msg) => Control::Fail(msg),
            None => Control::Continue,
        }
    }
}

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Asks the loop to checkpoint and stop after SIGINT or SIGTERM. A second signal, after the
/// handler has been restored to the default, ends the process at once.
pub struct StopOnSignal;

impl StopOnSignal {
    /// Installs the handlers (once per process; later calls only clear a stale flag).
    pub fn install() -> Self {
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe {
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            }
        });
        SIGNALLED.store(false, Ordering::SeqCst);
        StopOnSignal
    }

    /// Whether a signal arrived.
    pub fn signalled() -> bool {
        SIGNALLED.load(Ordering::SeqCst)
    }
}

impl<M: Method> Observer<M> for StopOnSignal {
    fn on_step(&mut self, _: &LogRow, _: &M) -> Control {
        if Self::signalled() {
            // The next signal ends the process (e.g. a checkpoint write that hangs).
            // SAFETY: restoring the default disposition is always allowed.
            unsafe {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
            }
            Control::Stop
        } else {
            Control::Continue
        }
    }
}

/// The checkpoint folder of a run: `<run>/checkpoint/` holds `loop_state.json`,
/// `train_log.json` and the method's state files.
pub const CHECKPOINT_DIR: &str = "checkpoint";
const LOOP_STATE: &str = "loop_state.json";
const LOG_FILE: &str = "train_log.json";

/// Writes checkpoints into a run folder: the new one is written in full beside the old one,
/// then swapped in by renames, so that a kill at any moment leaves one complete checkpoint.
pub struct FolderCheckpoints {
    run: PathBuf,
}

impl FolderCheckpoints {
    /// Checkpoints of the run in `run`.
    pub fn new(run: &Path) -> Self {
        Self {
            run: run.to_path_buf(),
        }
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

impl CheckpointSink for FolderCheckpoints {
    fn save(&mut self, c: &Checkpoint) -> Result<(), String> {
        let dir = self.run.join(CHECKPOINT_DIR);
        let new = self.run.join(format!(".{CHECKPOINT_DIR}.new"));
        let old = self.run.join(format!(".{CHECKPOINT_DIR}.old"));
        if new.exists() {
            fs::remove_dir_all(&new).map_err(io_err(&new))?;
        }
        fs::create_dir_all(&new).map_err(io_err(&new))?;
        let put = |name: &str, bytes: &[u8]| -> Result<(), String> {
            write_atomic(&new.join(name), bytes).map_err(|e: RunError| e.to_string())
        };
        for (name, bytes) in &c.method {
            put(name, bytes)?;
        }
        crate::fault::point("checkpoint-write", c.state.iteration);
        put(
            LOOP_STATE,
            &serde_json::to_vec(c.state).map_err(|e| e.to_string())?,
        )?;
        put(
            LOG_FILE,
            &serde_json::to_vec(c.log).map_err(|e| e.to_string())?,
        )?;
        // Swap: the complete new one in, the old one out. A kill between the renames leaves
        // `.checkpoint.old` complete, which `load_checkpoint` falls back to.
        if dir.exists() {
            if old.exists() {
                fs::remove_dir_all(&old).map_err(io_err(&old))?;
            }
            fs::rename(&dir, &old).map_err(io_err(&dir))?;
        }
        crate::fault::point("checkpoint-swap", c.state.iteration);
        fs::rename(&new, &dir).map_err(io_err(&new))?;
        if old.exists() {
            fs::remove_dir_all(&old).map_err(io_err(&old))?;
        }
        Ok(())
    }
}

/// A checkpoint read back from a run folder.
pub struct SavedCheckpoint {
    /// The method's state files.
    pub method: StateFiles,
    /// The loop's state.
    pub state: LoopState,
    /// The log so far.
    pub log: Vec<LogRow>,
}

/// Reads the run's last complete checkpoint (`checkpoint/`, else `.checkpoint.old/` left by a
/// kill during a swap); `Ok(None)` when the run has none.
pub fn load_checkpoint(run: &Path) -> Result<Option<SavedCheckpoint>, String> {
    let dir = [
        run.join(CHECKPOINT_DIR),
        run.join(format!(".{CHECKPOINT_DIR}.old")),
    ]
    .into_iter()
    .find(|d| d.join(LOOP_STATE).is_file() && d.join(LOG_FILE).is_file());
    let Some(dir) = dir else {
        return Ok(None);
    };
    let read = |name: &str| fs::read(dir.join(name)).map_err(io_err(&dir.join(name)));
    let state: LoopState = serde_json::from_slice(&read(LOOP_STATE)?)
        .map_err(|e| format!("{}: {e}", dir.join(LOOP_STATE).display()))?;
    let log: Vec<LogRow> = serde_json::from_slice(&read(LOG_FILE)?)
        .map_err(|e| format!("{}: {e}", dir.join(LOG_FILE).display()))?;
    let mut method = StateFiles::new();
    for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == LOOP_STATE || name == LOG_FILE || name.starts_with('.') {
            continue;
        }
        method.insert(name.clone(), read(&name)?);
    }
    Ok(Some(SavedCheckpoint { method, state, log }))
}
