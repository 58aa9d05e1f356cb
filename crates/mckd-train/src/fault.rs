//! Fault injection for the kill-and-resume tests: `MCKD_FAULT=<point>:<iteration>` aborts the
//! process (as SIGKILL would: no destructor, no flush) when the loop reaches `point` at
//! `iteration`. Points: `after-iteration` (the iteration's log row is taken, before any
//! checkpoint), `checkpoint-write` (the method's state files of the checkpoint are written, the
//! loop state and log are not), `checkpoint-swap` (the old checkpoint is moved aside, the new
//! one not yet in place). Unset: nothing happens.

use std::sync::OnceLock;

/// The injected fault, read once.
fn fault() -> Option<&'static (String, usize)> {
    static FAULT: OnceLock<Option<(String, usize)>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let v = std::env::var("MCKD_FAULT").ok()?;
            let (point, it) = v.rsplit_once(':')?;
            Some((point.to_string(), it.parse().ok()?))
        })
        .as_ref()
}

/// Aborts the process if the injected fault is `point` at `iteration`.
pub fn point(point: &str, iteration: usize) {
    if let Some((p, it)) = fault()
        && p == point
        && *it == iteration
    {
        eprintln!("MCKD_FAULT: aborting at {point}:{iteration}");
        std::process::abort();
    }
}
