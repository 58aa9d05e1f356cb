//! Grids on a cluster: a planned grid (one self-contained run folder per run) handed to Slurm
//! as a job array whose tasks each train one run (`mckd run-one <run folder>`), then merged on
//! any machine. We do not schedule anything ourselves: the cluster's scheduler does.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::run::{RunDir, RunError, RunState};

/// `--plan` and `--slurm` of a grid command (`avmnist reproduce`, `brats demo`, `brats real`).
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// Only write the grid into --out (plan.json and one self-contained config.json per run
    /// folder) and stop: train each run with `mckd run-one RUN` anywhere (in any order, on any
    /// machine), then merge; both commands are printed.
    #[arg(long)]
    pub plan: bool,
    /// With --plan: also write OUT/submit.sbatch, a Slurm job array with one task per run
    /// (listed in OUT/runs.txt), and print the commands to submit and merge.
    #[arg(long, requires = "plan")]
    pub slurm: bool,
    /// Settings of the Slurm job array.
    #[command(flatten)]
    pub slurm_options: SlurmOptions,
}

/// Finishes `--plan` of `grid`, whose runs are the folders `dirs` (relative to it): marks the
/// grid planned and, with `--slurm`, writes `runs.txt`, `submit.sbatch` and `slurm/`. Returns
/// what to print: how to train the runs (`run_pattern`, e.g. `runs/<run>`) or submit them, and
/// the merge (`exe merge_command --grid GRID`).
pub fn write_planned(
    grid: &RunDir,
    dirs: &[PathBuf],
    args: &PlanArgs,
    exe: &Path,
    run_pattern: &str,
    merge_command: &str,
) -> Result<String, RunError> {
    let root = std::fs::canonicalize(grid.path()).unwrap_or_else(|_| grid.path().to_path_buf());
    let runs: Vec<PathBuf> = dirs.iter().map(|d| root.join(d)).collect();
    grid.set_status(
        RunState::Running,
        Some(format!("planned: {} runs, none trained here", runs.len())),
        None,
    )?;
    let merge = format!(
        "{} {merge_command} --grid {}",
        exe.display(),
        root.display()
    );
    if !args.slurm {
        return Ok(format!(
            "planned {} runs in {}\ntrain each: {} run-one {}/{run_pattern}   (any order, any \
             machine)\nthen:       {merge}",
            runs.len(),
            root.display(),
            exe.display(),
            root.display()
        ));
    }
    let files = slurm_files(&root, &runs, exe, &args.slurm_options);
    grid.write("runs.txt", files.runs.as_bytes())?;
    grid.write("submit.sbatch", files.script.as_bytes())?;
    let logs = root.join("slurm");
    std::fs::create_dir_all(&logs).map_err(|source| RunError::Unwritable { path: logs, source })?;
    Ok(format!(
        "planned {} runs in {}\nsubmit:  sbatch {}\nthen:    {merge}",
        runs.len(),
        root.display(),
        root.join("submit.sbatch").display()
    ))
}

/// Settings of the `sbatch` script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct SlurmOptions {
    /// Slurm partition (`--partition`) [default: the cluster's].
    #[arg(long = "slurm-partition")]
    pub partition: Option<String>,
    /// Time limit of one run (`--time`).
    #[arg(long = "slurm-time", default_value = "04:00:00")]
    pub time: String,
    /// Memory of one run (`--mem`).
    #[arg(long = "slurm-mem", default_value = "8G")]
    pub mem: String,
    /// Cores of one run (`--cpus-per-task`); the run uses as many threads.
    #[arg(long = "slurm-cpus", default_value_t = 2)]
    pub cpus_per_task: usize,
    /// Further `#SBATCH` lines, e.g. `--slurm-extra=--account=myproj` (repeatable).
    #[arg(long = "slurm-extra")]
    pub extra: Vec<String>,
}

/// The files of a grid's Slurm submission: `runs.txt` (one run folder per line, the array
/// index is the line) and `submit.sbatch`.
pub struct SlurmFiles {
    /// `runs.txt` content.
    pub runs: String,
    /// `submit.sbatch` content.
    pub script: String,
}

/// Quotes a string for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sbatch` script of a grid in `grid` whose runs are the folders `runs` (absolute paths
/// are best: the script may run from another directory), trained by `exe run-one`.
pub fn slurm_files(grid: &Path, runs: &[PathBuf], exe: &Path, opts: &SlurmOptions) -> SlurmFiles {
    let list = runs
        .iter()
        .map(|r| r.display().to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let g = grid.display().to_string();
    let mut s = String::from("#!/bin/bash\n");
    s.push_str(&format!(
        "#SBATCH --job-name=mckd-{}\n",
        grid.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "grid".into())
    ));
    s.push_str(&format!(
        "#SBATCH --array=0-{}\n",
        runs.len().saturating_sub(1)
    ));
    s.push_str(&format!(
        "#SBATCH --cpus-per-task={}\n",
        opts.cpus_per_task.max(1)
    ));
    s.push_str(&format!("#SBATCH --time={}\n", opts.time));
    s.push_str(&format!("#SBATCH --mem={}\n", opts.mem));
    s.push_str(&format!("#SBATCH --output={g}/slurm/%A_%a.out\n"));
    if let Some(p) = &opts.partition {
        s.push_str(&format!("#SBATCH --partition={p}\n"));
    }
    for e in &opts.extra {
        s.push_str(&format!("#SBATCH {e}\n"));
    }
    s.push_str(&format!(
        "set -euo pipefail\n\
         # One thread per allocated core.\n\
         export RAYON_NUM_THREADS=\"${{SLURM_CPUS_PER_TASK:-1}}\"\n\
         RUN=\"$(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {runs})\"\n\
         exec {exe} run-one \"$RUN\"\n",
        runs = quote(&format!("{g}/runs.txt")),
        exe = quote(&exe.display().to_string()),
    ));
    SlurmFiles {
        runs: list + "\n",
        script: s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_runs_line_k_of_the_list_as_task_k() {
        let opts = SlurmOptions {
            partition: Some("cpu".into()),
            time: "01:00:00".into(),
            mem: "4G".into(),
            cpus_per_task: 3,
            extra: vec!["--account=lab".into()],
        };
        let runs = vec![PathBuf::from("/g/runs/a"), PathBuf::from("/g/runs/b it's")];
        let f = slurm_files(Path::new("/g"), &runs, Path::new("/opt/mckd"), &opts);
        assert_eq!(f.runs, "/g/runs/a\n/g/runs/b it's\n");
        for line in [
            "#SBATCH --array=0-1",
            "#SBATCH --cpus-per-task=3",
            "#SBATCH --time=01:00:00",
            "#SBATCH --mem=4G",
            "#SBATCH --partition=cpu",
            "#SBATCH --account=lab",
            "#SBATCH --output=/g/slurm/%A_%a.out",
            "exec '/opt/mckd' run-one \"$RUN\"",
        ] {
            assert!(f.script.contains(line), "{line} missing from\n{}", f.script);
        }
        assert!(
            f.script
                .contains("RAYON_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"")
        );
    }
}
