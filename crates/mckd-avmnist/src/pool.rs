//! Runs of a grid in child processes of this binary (`--jobs N`): each child trains one run
//! folder through the hidden `run-one` subcommand, reading the parent's loaded data from one
//! snapshot file. Every run stays deterministic for its seed (two MCKD runs trained in threads
//! of one process were measured not to be reproducible: burn's device generator is
//! process-wide).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use mckd_data::AvMnist;
use mckd_train::run::RunDir;

use crate::run::{AvmnistError, Result};

/// The arguments that select this binary's `avmnist` subcommands: what precedes `subcommand`
/// on this process's command line (`["avmnist"]` under `mckd`, `[]` under `mckd-avmnist`).
pub fn command_prefix(subcommand: &str) -> Vec<std::ffi::OsString> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let at = args
        .iter()
        .position(|a| a == subcommand)
        .unwrap_or(args.len());
    args[..at].to_vec()
}

/// Trains the run folders `dirs` in child processes, `jobs` at a time, each with
/// `threads_per_child` threads unless `RAYON_NUM_THREADS` is set; child stderr goes to
/// `<run>/stderr.log`. `on_done(i, result)` sees each finished run (in completion order).
#[allow(clippy::too_many_arguments)]
pub fn run_children(
    data: &AvMnist,
    grid: &RunDir,
    dirs: &[PathBuf],
    prefix: &[std::ffi::OsString],
    jobs: usize,
    threads_per_child: usize,
    extra_args: &[String],
    on_done: &(dyn Fn(usize, &Result<()>) + Sync),
) -> Result<Vec<Result<()>>> {
    let exe = std::env::current_exe().map_err(|e| AvmnistError::File {
        path: PathBuf::from("<this program>"),
        msg: format!("cannot find this program's path: {e}"),
    })?;
    let snapshot = grid.file(".avmnist-data.snapshot");
    mckd_train::run::write_atomic(&snapshot, &data.to_snapshot())?;
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<()>>>> =
        Mutex::new((0..dirs.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(dirs.len()) {
            scope.spawn(|| {
                while let Some(dir) = dirs.get(next.fetch_add(1, Ordering::SeqCst)) {
                    let i = dirs.iter().position(|d| d == dir).expect("listed");
                    let r = run_child(&exe, prefix, dir, &snapshot, threads_per_child, extra_args);
                    on_done(i, &r);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
                }
            });
        }
    });
    let _ = std::fs::remove_file(&snapshot);
    Ok(results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every run ran"))
        .collect())
}

fn run_child(
    exe: &Path,
    prefix: &[std::ffi::OsString],
    dir: &Path,
    snapshot: &Path,
    threads: usize,
    extra_args: &[String],
) -> Result<()> {
    let stderr_path = dir.join("stderr.log");
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| AvmnistError::File {
        path: stderr_path.clone(),
        msg: e.to_string(),
    })?;
    let mut command = std::process::Command::new(exe);
    // The children share the cores: unless the user chose, each gets its share of them (with
    // more threads than cores the pools' spinning workers would take turns with the work).
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        command.env("RAYON_NUM_THREADS", threads.to_string());
    }
    let status = command
        .args(prefix)
        .arg("run-one")
        .arg("--run")
        .arg(dir)
        .arg("--snapshot")
        .arg(snapshot)
        .args(extra_args)
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .status()
        .map_err(|e| AvmnistError::File {
            path: exe.to_path_buf(),
            msg: format!("cannot start a worker process: {e}"),
        })?;
    if std::fs::metadata(&stderr_path).is_ok_and(|m| m.len() == 0) {
        let _ = std::fs::remove_file(&stderr_path);
    }
    if status.success() {
        Ok(())
    } else {
        Err(AvmnistError::File {
            path: stderr_path,
            msg: format!(
                "the run in {} failed ({status}); see this file",
                dir.display()
            ),
        })
    }
}
