//! The one training loop every task and method goes through: an iteration budget (epochs as a
//! convenience), a sampling policy, two stages (every modality present, then random dropping),
//! meta phases, observers (progress, logging, probes, timing, the divergence guard),
//! checkpoints and resume.

use std::time::Instant;

use burn::prelude::*;
use mckd_core::rng::{rng_from_state, rng_state};
use mckd_core::{Method, StateFiles, SubsetSampling, mask_tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use crate::config::{Budget, LoopConfig, LrSchedule, MaskGranularity, MetaSchedule, Sampling};

/// A data source the loop draws batches from.
pub trait Source {
    /// The batch type of the task.
    type Batch;
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The modalities that sample `i` has at all (a sample without audio can never present it).
    fn available(&self, i: usize) -> &[bool];
    /// A batch of the given samples on `device`.
    fn batch(&self, indices: &[usize], device: &Device) -> Self::Batch;
    /// The state of the source's own random generator (random crops), for checkpoints; empty
    /// when it has none.
    fn random_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Restores [`random_state`](Source::random_state).
    fn set_random_state(&self, state: &[u8]) -> Result<(), String> {
        if state.is_empty() {
            Ok(())
        } else {
            Err("this source has no random state".into())
        }
    }
}

/// One line of `train_log.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// Inner iteration, 1-based.
    pub iteration: usize,
    /// Epoch, 0-based (0 throughout when sampling by draws).
    pub epoch: usize,
    /// Training stage, 0-based.
    pub stage: usize,
    /// Learning rate used.
    pub lr: f64,
    /// The method's loss terms ([`Method::term_names`]).
    pub terms: Vec<f32>,
    /// Mean meta loss of the meta phase after this iteration, if one ran.
    pub meta_loss: Option<f32>,
    /// The method's state values after this iteration ([`Method::state_names`], e.g. the
    /// normalised IWV).
    pub state: Vec<f32>,
}

impl LogRow {
    /// The value of term `name` among `names` (NaN if absent).
    pub fn term(&self, names: &[String], name: &str) -> f32 {
        names
            .iter()
            .position(|n| n == name)
            .and_then(|i| self.terms.get(i).copied())
            .unwrap_or(f32::NAN)
    }
}

/// Column names of a train log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogColumns {
    /// Loss-term names.
    pub terms: Vec<String>,
    /// State-value names.
    pub state: Vec<String>,
    /// Whether the run has two stages (adds a `stage` column).
    pub staged: bool,
}

impl LogColumns {
    /// The columns of a method's log.
    pub fn of<M: Method>(method: &M, cfg: &LoopConfig) -> Self {
        Self {
            terms: method.term_names(),
            state: method.state_names(),
            staged: cfg.full_fraction > 0.0,
        }
    }
}

/// `train_log.csv` content: `iteration,epoch[,stage],lr,<terms>,meta_loss,<state>`.
pub fn log_csv(rows: &[LogRow], columns: &LogColumns) -> String {
    let mut out = String::from("iteration,epoch");
    if columns.staged {
        out.push_str(",stage");
    }
    out.push_str(",lr");
    for n in &columns.terms {
        out.push_str(&format!(",{n}"));
    }
    out.push_str(",meta_loss");
    for n in &columns.state {
        out.push_str(&format!(",{n}"));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!("{},{}", r.iteration, r.epoch));
        if columns.staged {
            out.push_str(&format!(",{}", r.stage));
        }
        out.push_str(&format!(",{:e}", r.lr));
        for t in &r.terms {
            out.push_str(&format!(",{t}"));
        }
        out.push_str(&format!(
            ",{}",
            r.meta_loss.map(|v| v.to_string()).unwrap_or_default()
        ));
        for w in &r.state {
            out.push_str(&format!(",{w}"));
        }
        out.push('\n');
    }
    out
}

/// Reads a `train_log.csv` written by [`log_csv`] back into its columns and rows.
pub fn parse_log_csv(text: &str) -> Result<(LogColumns, Vec<LogRow>), String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty log")?.split(',').collect();
    let staged = header.get(2) == Some(&"stage");
    let lr_at = if staged { 3 } else { 2 };
    if header.first() != Some(&"iteration") || header.get(lr_at) != Some(&"lr") {
        return Err(
            "not a train log: the header must start with iteration,epoch[,stage],lr".into(),
        );
    }
    let meta_at = header
        .iter()
        .position(|&h| h == "meta_loss")
        .ok_or("no meta_loss column")?;
    let columns = LogColumns {
        terms: header[lr_at + 1..meta_at]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        state: header[meta_at + 1..]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        staged,
    };
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').collect();
        let bad = |what: &str| format!("line {}: {what}", i + 2);
        if cells.len() != header.len() {
            return Err(bad("wrong number of cells"));
        }
        let num = |c: &str| {
            c.parse::<f64>()
                .map_err(|_| bad(&format!("`{c}` is not a number")))
        };
        let f32s = |cs: &[&str]| -> Result<Vec<f32>, String> {
            cs.iter().map(|c| num(c).map(|v| v as f32)).collect()
        };
        rows.push(LogRow {
            iteration: num(cells[0])? as usize,
            epoch: num(cells[1])? as usize,
            stage: if staged { num(cells[2])? as usize } else { 0 },
            lr: num(cells[lr_at])?,
            terms: f32s(&cells[lr_at + 1..meta_at])?,
            meta_loss: if cells[meta_at].is_empty() {
                None
            } else {
                Some(num(cells[meta_at])? as f32)
            },
            state: f32s(&cells[meta_at + 1..])?,
        });
    }
    Ok((columns, rows))
}

/// Draws the presence mask of one sample: the rule applied to the sample's available
/// modalities.
pub fn draw_mask<R: Rng>(rule: SubsetSampling, available: &[bool], rng: &mut R) -> Vec<bool> {
    let idx: Vec<usize> = (0..available.len()).filter(|&i| available[i]).collect();
    assert!(!idx.is_empty(), "a sample with no modality");
    let sub = mckd_core::sample_subset(rule, idx.len(), rng);
    let mut mask = vec![false; available.len()];
    for (k, &i) in idx.iter().enumerate() {
        mask[i] = sub[k];
    }
    mask
}

/// Draws the masks of a batch.
fn draw_masks<S: Source, R: Rng>(
    source: &S,
    idx: &[usize],
    rule: SubsetSampling,
    granularity: MaskGranularity,
    n: usize,
    rng: &mut R,
) -> Vec<Vec<bool>> {
    match granularity {
        MaskGranularity::Sample => idx
            .iter()
            .map(|&i| draw_mask(rule, source.available(i), rng))
            .collect(),
        MaskGranularity::Batch => {
            let shared = draw_mask(rule, &vec![true; n], rng);
            idx.iter()
                .map(|&i| {
                    let avail = source.available(i);
                    let m: Vec<bool> = shared.iter().zip(avail).map(|(a, b)| *a && *b).collect();
                    if m.iter().any(|&p| p) {
                        m
                    } else {
                        avail.to_vec()
                    }
                })
                .collect()
        }
    }
}

/// Inner iterations per epoch.
pub fn iterations_per_epoch(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last && len >= batch_size {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// Inner iterations a run takes.
pub fn total_iterations(cfg: &LoopConfig, train_len: usize) -> usize {
    match (cfg.budget, cfg.sampling) {
        (Budget::Iterations(n), _) => n,
        (Budget::Epochs(e), Sampling::EpochShuffle { drop_last }) => {
            iterations_per_epoch(train_len, cfg.batch_size, drop_last) * e
        }
        (Budget::Epochs(e), Sampling::Draws) => e * train_len.div_ceil(cfg.batch_size.max(1)),
    }
}

/// The last iteration of stage 1 (0 when the run has one stage).
pub fn stage1_iterations(cfg: &LoopConfig, total: usize) -> usize {
    (total as f64 * cfg.full_fraction).floor() as usize
}

/// Where the loop stands: enough to continue exactly (checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Iterations done.
    pub iteration: usize,
    /// Current epoch (epoch shuffle).
    pub epoch: usize,
    /// The loop's generator ([`mckd_core::rng::rng_state`]).
    pub rng: Vec<u8>,
    /// Epoch shuffle: this epoch's order; draws: the samples left before a refill.
    pub order: Vec<usize>,
    /// Epoch shuffle: the next position in `order`.
    pub pos: usize,
    /// The meta source's order (shuffled chunks, or samples left before a refill).
    pub meta_order: Vec<usize>,
    /// Epoch shuffle: the next position in `meta_order`.
    pub meta_pos: usize,
    /// The training source's random state.
    pub train_source: Vec<u8>,
    /// The meta source's random state.
    pub meta_source: Vec<u8>,
    /// Seconds spent in inner steps, meta steps, and meta steps run.
    pub timing: Timing,
}

/// Time spent in the steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    /// Seconds in inner steps.
    pub inner_seconds: f64,
    /// Seconds in meta steps.
    pub meta_seconds: f64,
    /// Meta steps run.
    pub meta_steps: usize,
    /// Wall-clock seconds of the loop (steps, batches, observers, checkpoints), summed over the
    /// processes of a resumed run up to the checkpoint each resumed from. Checkpoints written
    /// before this field existed read as 0.
    #[serde(default)]
    pub wall_seconds: f64,
}

impl Timing {
    /// Mean seconds per inner step over `iterations`.
    pub fn per_inner(&self, iterations: usize) -> f64 {
        self.inner_seconds / iterations.max(1) as f64
    }

    /// Mean seconds per meta step (NaN when none ran).
    pub fn per_meta(&self) -> f64 {
        if self.meta_steps == 0 {
            f64::NAN
        } else {
            self.meta_seconds / self.meta_steps as f64
        }
    }
}

/// A checkpoint: the method's state, the loop's, and the log so far.
pub struct Checkpoint<'a> {
    /// The method's state files.
    pub method: StateFiles,
    /// The loop's state.
    pub state: &'a LoopState,
    /// The log rows so far.
    pub log: &'a [LogRow],
}

/// What observers may ask of the loop.
#[derive(Debug, Clone, PartialEq)]
pub enum Control {
    /// Go on.
    Continue,
    /// Write a checkpoint and stop (e.g. after SIGINT); the run can be resumed.
    Stop,
    /// Stop without writing a checkpoint: the model is not to be trusted (the last good
    /// checkpoint stays); the message says why.
    Fail(String),
}

/// Something that watches the loop: progress, logs, probes, timing, the divergence guard.
pub trait Observer<M: Method> {
    /// After every iteration (the meta phase included), with its log row.
    fn on_step(&mut self, row: &LogRow, method: &M) -> Control {
        let _ = (row, method);
        Control::Continue
    }
}

/// Where checkpoints go (the run folder).
pub trait CheckpointSink {
    /// Stores a checkpoint durably; the previous one stays valid until this one is complete.
    fn save(&mut self, checkpoint: &Checkpoint) -> Result<(), String>;
}

/// How a loop ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    /// The budget was trained.
    Finished,
    /// An observer asked to stop; a checkpoint was written.
    Stopped,
    /// An observer reported a failure; the message says what.
    Failed(String),
}

/// The outcome of [`train`].
#[derive(Debug)]
pub struct Trained {
    /// Every log row (those of a resumed checkpoint included).
    pub log: Vec<LogRow>,
    /// How it ended.
    pub ended: Ended,
    /// Where it stands (for the final checkpoint).
    pub state: LoopState,
}

/// Errors of the loop.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// A setting is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A checkpoint could not be written.
    #[error("cannot write a checkpoint: {0}")]
    Checkpoint(String),
    /// A checkpoint does not fit this run.
    #[error("cannot resume: {0}")]
    Resume(String),
}

/// Everything the loop needs besides the method and the data.
pub struct LoopSetup<'a, M: Method> {
    /// Loop settings.
    pub cfg: &'a LoopConfig,
    /// Learning-rate schedule.
    pub schedule: &'a LrSchedule,
    /// Seed of the loop's generator (shuffles, mask draws, meta batches).
    pub seed: u64,
    /// Device of the batches (autodiff).
    pub device: &'a Device,
    /// Observers, called in order after every iteration.
    pub observers: Vec<&'a mut dyn Observer<M>>,
    /// Checkpoint sink (`None`: no checkpoints).
    pub checkpoints: Option<&'a mut dyn CheckpointSink>,
    /// Continue from this state and log (restore the method's state before).
    pub resume: Option<(LoopState, Vec<LogRow>)>,
}

/// Trains `method` on `train`, with meta phases on `meta` (when the method has a meta step and
/// the schedule asks for them).
///
/// Per iteration: pick the batch (sampling policy), draw the presence masks (every available
/// modality in stage 1, the subset rule in stage 2), one [`Method::train_step`], then, every
/// `meta.interval` iterations, a meta phase of `meta.steps` [`Method::meta_step`]s on their
/// own meta batches; then the observers see the log row. Same seed, same data: same log.
pub fn train<M, S>(
    method: &mut M,
    train: &S,
    meta: Option<&S>,
    setup: LoopSetup<'_, M>,
) -> Result<Trained, LoopError>
where
    M: Method,
    S: Source<Batch = M::Batch>,
{
    let LoopSetup {
        cfg,
        schedule,
        seed,
        device,
        mut observers,
        mut checkpoints,
        resume,
    } = setup;
    cfg.validate()?;
    if train.is_empty() {
        return Err(crate::config::ConfigError::Invalid {
            field: "training data".into(),
            problem: "no training samples".into(),
        }
        .into());
    }
    // The other pool workers spin through the steps instead of sleeping between kernels.
    mckd_kernels::with_busy_workers(move || {
        let n = method.modalities().len();
        let total = total_iterations(cfg, train.len()).max(1);
        let s1 = stage1_iterations(cfg, total);
        let meta = meta.filter(|m| !m.is_empty() && method.has_meta_step());
        let (mut st, mut log, mut rng) = match resume {
            Some((st, log)) => {
                let rng = rng_from_state(&st.rng)
                    .ok_or_else(|| LoopError::Resume("bad loop generator state".into()))?;
                if st.iteration > total || log.len() != st.iteration {
                    return Err(LoopError::Resume(format!(
                        "the checkpoint is at iteration {} with {} log rows, the run has {total}",
                        st.iteration,
                        log.len()
                    )));
                }
                train
                    .set_random_state(&st.train_source)
                    .map_err(LoopError::Resume)?;
                if let Some(m) = meta {
                    m.set_random_state(&st.meta_source)
                        .map_err(LoopError::Resume)?;
                }
                (st, log, rng)
            }
            None => {
                let st = LoopState {
                    iteration: 0,
                    epoch: 0,
                    rng: Vec::new(),
                    order: Vec::new(),
                    pos: 0,
                    // Epoch shuffle: the identity, with the position past its end so that the
                    // first meta batch shuffles it; draws: empty, refilled at the first draw.
                    meta_order: match (cfg.sampling, meta) {
                        (Sampling::EpochShuffle { .. }, Some(m)) => (0..m.len()).collect(),
                        _ => Vec::new(),
                    },
                    meta_pos: meta.map_or(0, |m| m.len()),
                    train_source: Vec::new(),
                    meta_source: Vec::new(),
                    timing: Timing::default(),
                };
                (
                    st,
                    Vec::with_capacity(total),
                    ChaCha8Rng::seed_from_u64(seed),
                )
            }
        };
        if st.iteration == 0
            && let Sampling::EpochShuffle { .. } = cfg.sampling
        {
            st.order = shuffled(train.len(), &mut rng);
        }
        let mut current_stage = None;
        let mut ended = Ended::Finished;
        // The loop's wall time continues from the checkpoint's.
        let wall = (Instant::now(), st.timing.wall_seconds);
        while st.iteration < total {
            let stage = usize::from(s1 > 0 && st.iteration >= s1);
            if current_stage != Some(stage) {
                method.begin_stage(stage);
                current_stage = Some(stage);
            }
            // The schedule restarts with each stage.
            let (stage_start, stage_len) = match (s1, stage) {
                (0, _) => (0, total),
                (_, 0) => (0, s1),
                _ => (s1, total - s1),
            };
            let idx = next_batch(cfg, train.len(), &mut st, &mut rng);
            // A step schedule counts epochs from the start of the run.
            let epoch = match cfg.sampling {
                Sampling::EpochShuffle { .. } => st.epoch,
                Sampling::Draws => 0,
            };
            let progress = (st.iteration - stage_start) as f64 / stage_len.max(1) as f64;
            let lr = schedule.at(epoch, progress);
            st.iteration += 1;
            // Stage 1 of a two-stage run: every available modality present.
            let rule = if stage == 0 && s1 > 0 {
                SubsetSampling::Full
            } else {
                cfg.subsets
            };
            let masks = draw_masks(train, &idx, rule, cfg.granularity, n, &mut rng);
            let batch = train.batch(&idx, device);
            let mask = mask_tensor(&masks, device);
            let t = Instant::now();
            let terms = method.train_step(&batch, &mask, lr);
            st.timing.inner_seconds += t.elapsed().as_secs_f64();
            let interval = if stage == 0 {
                cfg.meta.interval
            } else {
                cfg.meta.interval_stage2
            };
            let mut meta_loss = None;
            if let Some(meta) = meta
                && interval > 0
                && st.iteration.is_multiple_of(interval)
            {
                let mut sum = 0.0f32;
                for _ in 0..cfg.meta.steps {
                    let bs = if cfg.meta.batch == 0 {
                        cfg.batch_size
                    } else {
                        cfg.meta.batch
                    };
                    // Consecutive chunks of one order cannot hold more than the source; draws
                    // with refill can (the crops of one case differ).
                    let bs = match cfg.sampling {
                        Sampling::EpochShuffle { .. } => bs.min(meta.len()),
                        Sampling::Draws => bs,
                    };
                    let midx = next_meta_batch(cfg, meta.len(), bs, &mut st, &mut rng);
                    let mb = meta.batch(&midx, device);
                    let t = Instant::now();
                    sum += method.meta_step(&mb);
                    st.timing.meta_seconds += t.elapsed().as_secs_f64();
                    st.timing.meta_steps += 1;
                }
                meta_loss = Some(if cfg.meta.steps == 1 {
                    sum
                } else {
                    sum / cfg.meta.steps as f32
                });
            }
            let row = LogRow {
                iteration: st.iteration,
                epoch,
                stage,
                lr,
                terms,
                meta_loss,
                state: method.state_values(),
            };
            let mut control = Control::Continue;
            for o in observers.iter_mut() {
                match o.on_step(&row, method) {
                    Control::Continue => {}
                    c => {
                        control = c;
                        break;
                    }
                }
            }
            log.push(row);
            crate::fault::point("after-iteration", st.iteration);
            if let Control::Fail(msg) = control {
                ended = Ended::Failed(msg);
                break;
            }
            let due = cfg.checkpoint_every > 0 && st.iteration.is_multiple_of(cfg.checkpoint_every);
            if (due || control == Control::Stop)
                && st.iteration < total
                && let Some(sink) = checkpoints.as_deref_mut()
            {
                record_state(&mut st, &rng, train, meta, wall);
                save_checkpoint(sink, method, &st, &log)?;
            }
            if control == Control::Stop {
                ended = Ended::Stopped;
                break;
            }
        }
        record_state(&mut st, &rng, train, meta, wall);
        Ok(Trained {
            log,
            ended,
            state: st,
        })
    })
}

/// Copies into `st` what the loop keeps outside it: the generators' states and the loop's wall
/// time (`wall`: when this process's loop started, and the seconds before it).
fn record_state<S: Source>(
    st: &mut LoopState,
    rng: &ChaCha8Rng,
    train: &S,
    meta: Option<&S>,
    wall: (Instant, f64),
) {
    st.rng = rng_state(rng).to_vec();
    st.train_source = train.random_state();
    st.meta_source = meta.map(|m| m.random_state()).unwrap_or_default();
    st.timing.wall_seconds = wall.1 + wall.0.elapsed().as_secs_f64();
}

fn save_checkpoint<M: Method>(
    sink: &mut dyn CheckpointSink,
    method: &M,
    st: &LoopState,
    log: &[LogRow],
) -> Result<(), LoopError> {
    let files = method
        .save_state()
        .map_err(|e| LoopError::Checkpoint(e.to_string()))?;
    sink.save(&Checkpoint {
        method: files,
        state: st,
        log,
    })
    .map_err(LoopError::Checkpoint)
}

fn shuffled(len: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(rng);
    order
}

/// The samples of the next batch.
fn next_batch(
    cfg: &LoopConfig,
    len: usize,
    st: &mut LoopState,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    let bs = cfg.batch_size;
    match cfg.sampling {
        Sampling::EpochShuffle { drop_last } => {
            loop {
                let left = len.saturating_sub(st.pos);
                // An incomplete last batch is skipped when dropping (unless no full batch fits).
                let usable = left > 0 && !(drop_last && left < bs && len >= bs);
                if usable {
                    let end = (st.pos + bs).min(len);
                    let idx = st.order[st.pos..end].to_vec();
                    st.pos = end;
                    return idx;
                }
                st.epoch += 1;
                st.order = shuffled(len, rng);
                st.pos = 0;
            }
        }
        Sampling::Draws => (0..bs).map(|_| draw(&mut st.order, len, rng)).collect(),
    }
}

/// The samples of the next meta batch.
fn next_meta_batch(
    cfg: &LoopConfig,
    len: usize,
    bs: usize,
    st: &mut LoopState,
    rng: &mut ChaCha8Rng,
) -> Vec<usize> {
    match cfg.sampling {
        Sampling::EpochShuffle { .. } => {
            if st.meta_pos + bs > st.meta_order.len() {
                st.meta_order.shuffle(rng);
                st.meta_pos = 0;
            }
            let idx = st.meta_order[st.meta_pos..st.meta_pos + bs].to_vec();
            st.meta_pos += bs;
            idx
        }
        Sampling::Draws => (0..bs)
            .map(|_| draw(&mut st.meta_order, len, rng))
            .collect(),
    }
}

/// One sample from the shuffled order, refilled when empty.
fn draw(order: &mut Vec<usize>, len: usize, rng: &mut ChaCha8Rng) -> usize {
    if order.is_empty() {
        *order = shuffled(len, rng);
    }
    order.pop().expect("refilled")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_respect_availability() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..500 {
            let m = draw_mask(SubsetSampling::Reference, &[true, false, true], &mut rng);
            assert!(!m[1] && (m[0] || m[2]));
        }
        let only = draw_mask(SubsetSampling::Reference, &[false, true], &mut rng);
        assert_eq!(only, vec![false, true]);
    }

    #[test]
    fn log_csv_round_trips() {
        let columns = LogColumns {
            terms: vec!["task_loss".into(), "ckd_loss".into()],
            state: vec!["iwv_a".into(), "iwv_b".into()],
            staged: true,
        };
        let rows = vec![
            LogRow {
                iteration: 1,
                epoch: 0,
                stage: 0,
                lr: 1e-3,
                terms: vec![2.380433, 3.3623738],
                meta_loss: Some(2.3069544),
                state: vec![0.37880674, 0.6211933],
            },
            LogRow {
                iteration: 2,
                epoch: 1,
                stage: 1,
                lr: 9.829629131445342e-3,
                terms: vec![0.1, f32::MIN_POSITIVE],
                meta_loss: None,
                state: vec![0.5, 0.5],
            },
        ];
        let text = log_csv(&rows, &columns);
        assert!(text.starts_with("iteration,epoch,stage,lr,task_loss,ckd_loss,meta_loss,iwv_a,"));
        let (c, r) = parse_log_csv(&text).unwrap();
        assert_eq!(c, columns);
        assert_eq!(r, rows);
        assert!(parse_log_csv("a,b\n1,2\n").is_err());
    }

    #[test]
    fn iteration_counts() {
        assert_eq!(iterations_per_epoch(1050, 64, true), 16);
        assert_eq!(iterations_per_epoch(1050, 64, false), 17);
    }

    use mckd_core::{ModalitySet, StateError, StateFiles};

    /// A method that records what the loop gives it; its "parameter" is a number each step
    /// moves by a draw of its own generator, so that a resumed run must restore both.
    struct Recorder {
        mods: ModalitySet,
        value: f32,
        rng: ChaCha8Rng,
        masks: Vec<(usize, Vec<Vec<bool>>)>,
        meta_batches: Vec<Vec<usize>>,
        stage: usize,
        stages_begun: Vec<usize>,
        nan_at: Option<usize>,
        steps: usize,
    }

    impl Recorder {
        fn new() -> Self {
            Self {
                mods: ModalitySet::new(["a", "b", "c"]),
                value: 0.0,
                rng: ChaCha8Rng::seed_from_u64(9),
                masks: vec![],
                meta_batches: vec![],
                stage: 0,
                stages_begun: vec![],
                nan_at: None,
                steps: 0,
            }
        }
    }

    impl Method for Recorder {
        type Batch = Vec<usize>;
        type Output = Tensor<2>;
        fn name(&self) -> &str {
            "recorder"
        }
        fn modalities(&self) -> &ModalitySet {
            &self.mods
        }
        fn term_names(&self) -> Vec<String> {
            vec!["loss".into()]
        }
        fn train_step(&mut self, batch: &Vec<usize>, mask: &Tensor<2>, lr: f64) -> Vec<f32> {
            self.steps += 1;
            let m = mask.clone().into_data().try_to_vec::<f32>().unwrap();
            let rows = m
                .chunks(3)
                .map(|r| r.iter().map(|&v| v > 0.5).collect())
                .collect();
            self.masks.push((self.stage, rows));
            self.value += self.rng.random::<f32>() * lr as f32 + batch[0] as f32 * 1e-3;
            if self.nan_at == Some(self.steps) {
                return vec![f32::NAN];
            }
            vec![self.value]
        }
        fn has_meta_step(&self) -> bool {
            true
        }
        fn meta_step(&mut self, batch: &Vec<usize>) -> f32 {
            self.meta_batches.push(batch.clone());
            self.value * 0.5
        }
        fn state_values(&self) -> Vec<f32> {
            vec![self.value]
        }
        fn state_names(&self) -> Vec<String> {
            vec!["value".into()]
        }
        fn begin_stage(&mut self, stage: usize) {
            self.stage = stage;
            self.stages_begun.push(stage);
        }
        fn predict(&self, _: &Vec<usize>, mask: &Tensor<2>) -> Tensor<2> {
            mask.clone()
        }
        fn save_state(&self) -> Result<StateFiles, StateError> {
            let mut f = StateFiles::new();
            f.insert("value".into(), self.value.to_le_bytes().to_vec());
            f.insert("rng".into(), rng_state(&self.rng).to_vec());
            f.insert("steps".into(), (self.steps as u64).to_le_bytes().to_vec());
            Ok(f)
        }
        fn load_state(&mut self, f: &StateFiles) -> Result<(), StateError> {
            let get = |n: &str| StateError::get(f, n);
            self.value = f32::from_le_bytes(get("value")?.try_into().unwrap());
            self.rng = rng_from_state(get("rng")?).unwrap();
            self.steps = u64::from_le_bytes(get("steps")?.try_into().unwrap()) as usize;
            Ok(())
        }
    }

    /// Samples `offset + i`; every modality available.
    struct Ids {
        offset: usize,
        len: usize,
        all: [bool; 3],
    }

    impl Source for Ids {
        type Batch = Vec<usize>;
        fn len(&self) -> usize {
            self.len
        }
        fn available(&self, _: usize) -> &[bool] {
            &self.all
        }
        fn batch(&self, idx: &[usize], _: &Device) -> Vec<usize> {
            idx.iter().map(|i| self.offset + i).collect()
        }
    }

    fn loop_cfg() -> LoopConfig {
        LoopConfig {
            budget: Budget::Iterations(30),
            batch_size: 2,
            sampling: Sampling::Draws,
            subsets: SubsetSampling::Reference,
            granularity: MaskGranularity::Batch,
            full_fraction: 0.5,
            meta: MetaSchedule {
                interval: 4,
                interval_stage2: 5,
                steps: 3,
                batch: 1,
            },
            checkpoint_every: 5,
        }
    }

    /// Keeps every checkpoint in memory.
    #[derive(Default)]
    struct Memory(Vec<(StateFiles, LoopState, Vec<LogRow>)>);

    impl CheckpointSink for Memory {
        fn save(&mut self, c: &Checkpoint) -> Result<(), String> {
            self.0
                .push((c.method.clone(), c.state.clone(), c.log.to_vec()));
            Ok(())
        }
    }

    fn run(
        method: &mut Recorder,
        sink: &mut Memory,
        resume: Option<(LoopState, Vec<LogRow>)>,
    ) -> Trained {
        let cfg = loop_cfg();
        let train_src = Ids {
            offset: 0,
            len: 7,
            all: [true; 3],
        };
        let meta_src = Ids {
            offset: 1000,
            len: 3,
            all: [true; 3],
        };
        let mut guard = crate::observe::DivergenceGuard::new(method);
        train(
            method,
            &train_src,
            Some(&meta_src),
            LoopSetup {
                cfg: &cfg,
                schedule: &LrSchedule::Poly {
                    lr: 1.0,
                    power: 1.0,
                },
                seed: 4,
                device: &Device::flex(),
                observers: vec![&mut guard],
                checkpoints: Some(sink),
                resume,
            },
        )
        .unwrap()
    }

    #[test]
    fn stages_and_meta_phases_follow_the_schedule() {
        let mut m = Recorder::new();
        let t = run(&mut m, &mut Memory::default(), None);
        assert_eq!(t.ended, Ended::Finished);
        assert_eq!(t.log.len(), 30);
        assert_eq!(m.stages_begun, [0, 1]);
        // Stage 1 (iterations 1-15): every modality present in every sample.
        for (i, (stage, masks)) in m.masks.iter().enumerate() {
            assert_eq!(*stage, usize::from(i >= 15));
            if *stage == 0 {
                assert!(masks.iter().flatten().all(|&p| p), "iteration {}", i + 1);
            }
        }
        // Stage 2 drops modalities (the reference rule over 15 iterations).
        assert!(
            m.masks[15..]
                .iter()
                .any(|(_, ms)| ms[0].iter().any(|&p| !p))
        );
        // Meta phases after 4, 8, 12 (stage 1, every 4) and 20, 25, 30 (stage 2, every 5),
        // 3 steps each, on meta-validation samples only (ids ≥ 1000), one sample per batch.
        let phases: Vec<usize> = t
            .log
            .iter()
            .filter(|r| r.meta_loss.is_some())
            .map(|r| r.iteration)
            .collect();
        assert_eq!(phases, [4, 8, 12, 20, 25, 30]);
        assert_eq!(m.meta_batches.len(), 18);
        assert!(
            m.meta_batches
                .iter()
                .all(|b| b.len() == 1 && b[0] >= 1000 && b[0] < 1003)
        );
        assert!(m.masks.iter().all(|(_, ms)| ms.len() == 2));
        // The schedule restarts with stage 2: lr = 1 − progress within each stage.
        assert_eq!(t.log[0].lr, 1.0);
        assert_eq!(t.log[15].lr, 1.0);
        assert!((t.log[14].lr - 1.0 / 15.0).abs() < 1e-12);
    }

    /// A fresh method loaded from a checkpoint and trained on from it.
    fn resumed(files: &StateFiles, state: &LoopState, log: &[LogRow]) -> (Recorder, Trained) {
        let mut m = Recorder::new();
        m.load_state(files).unwrap();
        let t = run(
            &mut m,
            &mut Memory::default(),
            Some((state.clone(), log.to_vec())),
        );
        (m, t)
    }

    #[test]
    fn a_resumed_run_ends_as_an_uninterrupted_one() {
        let mut whole = Recorder::new();
        let mut sink = Memory::default();
        let a = run(&mut whole, &mut sink, None);
        assert_eq!(sink.0.len(), 5, "checkpoints at 5, 10, 15, 20, 25");
        for (k, (files, state, log)) in sink.0.iter().enumerate() {
            assert_eq!(state.iteration, 5 * (k + 1));
            let (m, b) = resumed(files, state, log);
            assert_eq!(b.log, a.log, "resumed from iteration {}", state.iteration);
            assert_eq!(m.value, whole.value);
        }
    }

    #[test]
    fn the_loop_wall_time_covers_the_steps_and_continues_across_a_resume() {
        let steps = |t: &Timing| t.inner_seconds + t.meta_seconds;
        let mut sink = Memory::default();
        let a = run(&mut Recorder::new(), &mut sink, None);
        let mut walls: Vec<f64> = sink.0.iter().map(|c| c.1.timing.wall_seconds).collect();
        walls.push(a.state.timing.wall_seconds);
        assert!(walls.windows(2).all(|w| w[0] <= w[1]), "{walls:?}");
        for t in sink.0.iter().map(|c| &c.1.timing).chain([&a.state.timing]) {
            assert!(t.wall_seconds + 1e-9 >= steps(t), "{t:?}");
        }
        // Resumed from the checkpoint of iteration 15 as if 10,000 s had gone before it.
        let (files, state, log) = &sink.0[2];
        let mut state = state.clone();
        state.timing.wall_seconds = 1e4;
        let (_, b) = resumed(files, &state, log);
        let wall = b.state.timing.wall_seconds;
        assert!((1e4..1e4 + 60.0).contains(&wall), "{wall}");
        assert!(b.state.timing.inner_seconds >= state.timing.inner_seconds);
        // A checkpoint written before the field existed reads as 0 s so far.
        let mut old: serde_json::Value = serde_json::to_value(&state).unwrap();
        old["timing"]
            .as_object_mut()
            .unwrap()
            .remove("wall_seconds");
        let read: LoopState = serde_json::from_value(old).unwrap();
        assert_eq!(read.timing.wall_seconds, 0.0);
        assert_eq!(read.timing.inner_seconds, state.timing.inner_seconds);
    }

    #[test]
    fn a_non_finite_loss_fails_the_run_naming_the_iteration_and_term() {
        let mut m = Recorder::new();
        m.nan_at = Some(7);
        let mut sink = Memory::default();
        let t = run(&mut m, &mut sink, None);
        match &t.ended {
            Ended::Failed(msg) => {
                assert!(
                    msg.contains("iteration 7") && msg.contains("loss = NaN"),
                    "{msg}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.log.len(), 7);
        assert_eq!(
            sink.0.len(),
            1,
            "the checkpoint of iteration 5 stays the last good one"
        );
        assert_eq!(sink.0[0].1.iteration, 5);
    }
}
