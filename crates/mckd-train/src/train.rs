//! The generic MCKD training loop: non-dedicated inner steps, periodic meta steps, learning-rate
//! schedules, a progress bar and a per-iteration log.

use burn::prelude::*;
use indicatif::ProgressBar;
use mckd_core::{MckdModel, MckdTrainer, SubsetSampling, Task, mask_tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

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
}

/// Whether one presence mask is drawn per batch (as the reference code) or per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MaskGranularity {
    /// One draw per iteration, shared by the batch (intersected with what each sample has).
    #[default]
    Batch,
    /// One draw per sample.
    Sample,
}

/// Learning-rate schedule over epochs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LrSchedule {
    /// A constant rate.
    Constant {
        /// The rate.
        lr: f64,
    },
    /// `lr · gamma^(epoch / every)` (AV-MNIST: ×0.9 every 20 epochs).
    Step {
        /// Initial rate.
        lr: f64,
        /// Epochs between decays.
        every: usize,
        /// Decay factor.
        gamma: f64,
    },
    /// Cosine annealing from `lr` to 0 over the whole run, per iteration.
    Cosine {
        /// Initial rate.
        lr: f64,
    },
}

impl LrSchedule {
    /// The rate at `epoch` (0-based) and `progress` ∈ [0, 1) of the whole run.
    pub fn at(&self, epoch: usize, progress: f64) -> f64 {
        match *self {
            LrSchedule::Constant { lr } => lr,
            LrSchedule::Step { lr, every, gamma } => lr * gamma.powi((epoch / every.max(1)) as i32),
            LrSchedule::Cosine { lr } => 0.5 * lr * (1.0 + (std::f64::consts::PI * progress).cos()),
        }
    }
}

/// Loop settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoopConfig {
    /// Passes over the training source.
    pub epochs: usize,
    /// Samples per inner batch (and per meta batch).
    pub batch_size: usize,
    /// Seed of shuffling, mask draws and meta batches.
    pub seed: u64,
    /// Learning rate of the task optimiser.
    pub lr: LrSchedule,
    /// Mask drawing granularity.
    pub granularity: MaskGranularity,
    /// Drop the last incomplete batch of an epoch (batch norm dislikes batches of one).
    pub drop_last: bool,
}

/// One line of `train_log.csv`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRow {
    /// Inner iteration, 1-based.
    pub iteration: usize,
    /// Epoch, 0-based.
    pub epoch: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Task loss of the inner step.
    pub task_loss: f32,
    /// CKD loss of the inner step (before α).
    pub ckd_loss: f32,
    /// Meta loss if a meta step ran after this iteration.
    pub meta_loss: Option<f32>,
    /// Normalised IWV after this iteration.
    pub iwv: Vec<f32>,
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

/// Trains `model` on `train`, with meta steps on `meta` (skipped when `None` or when the
/// trainer's interval is 0). `on_iteration` sees every log row (for live logs); the progress
/// bar advances once per iteration.
// Each argument is a distinct role (model, optimisers, two sources, settings, device, progress,
// log sink); bundling them would only hide that.
#[allow(clippy::too_many_arguments)]
pub fn train<T, S>(
    model: MckdModel<T>,
    trainer: &mut MckdTrainer,
    train: &S,
    meta: Option<&S>,
    cfg: &LoopConfig,
    device: &Device,
    progress: &ProgressBar,
    mut on_iteration: impl FnMut(&LogRow),
) -> MckdModel<T>
where
    T: Task,
    S: Source<Batch = T::Batch>,
{
    // The other pool workers spin through the steps instead of sleeping between kernels.
    mckd_kernels::with_busy_workers(move || {
        let mut model = model;
        let n = model.task.modalities().len();
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let per_epoch = iterations_per_epoch(train.len(), cfg.batch_size, cfg.drop_last);
        let total = (per_epoch * cfg.epochs).max(1);
        let mut meta_order: Vec<usize> = meta.map(|m| (0..m.len()).collect()).unwrap_or_default();
        // Start past the end so that the first meta step shuffles.
        let mut meta_pos = meta_order.len();
        let mut iteration = 0;
        for epoch in 0..cfg.epochs {
            let mut order: Vec<usize> = (0..train.len()).collect();
            order.shuffle(&mut rng);
            for chunk in order.chunks(cfg.batch_size) {
                if cfg.drop_last && chunk.len() < cfg.batch_size && per_epoch > 0 {
                    continue;
                }
                let lr = cfg.lr.at(epoch, iteration as f64 / total as f64);
                iteration += 1;
                let masks = draw_masks(
                    train,
                    chunk,
                    trainer.config.sampling,
                    cfg.granularity,
                    n,
                    &mut rng,
                );
                let batch = train.batch(chunk, device);
                let mask = mask_tensor(&masks, device);
                let (m, stats) = trainer.inner_step(model, &batch, &mask, lr);
                model = m;
                let mut meta_loss = None;
                if let Some(meta) = meta.filter(|m| !m.is_empty())
                    && trainer.is_meta_iteration(iteration)
                {
                    let bs = cfg.batch_size.min(meta.len());
                    if meta_pos + bs > meta_order.len() {
                        meta_order.shuffle(&mut rng);
                        meta_pos = 0;
                    }
                    let idx = &meta_order[meta_pos..meta_pos + bs];
                    meta_pos += bs;
                    let (m, loss) = trainer.meta_step(model, &meta.batch(idx, device));
                    model = m;
                    meta_loss = Some(loss);
                }
                let row = LogRow {
                    iteration,
                    epoch,
                    lr,
                    task_loss: stats.task_loss,
                    ckd_loss: stats.ckd_loss,
                    meta_loss,
                    iwv: model.iwv.normalised_values(),
                };
                on_iteration(&row);
                progress.inc(1);
            }
        }
        model
    })
}

/// Inner iterations per epoch.
pub fn iterations_per_epoch(len: usize, batch_size: usize, drop_last: bool) -> usize {
    if drop_last && len >= batch_size {
        len / batch_size
    } else {
        len.div_ceil(batch_size)
    }
}

/// `train_log.csv` content from log rows, with one IWV column per modality.
pub fn log_csv(rows: &[LogRow], modality_names: &[String]) -> String {
    let mut out = String::from("iteration,epoch,lr,task_loss,ckd_loss,meta_loss");
    for n in modality_names {
        out.push_str(&format!(",iwv_{n}"));
    }
    out.push('\n');
    for r in rows {
        out.push_str(&format!(
            "{},{},{:e},{},{},{}",
            r.iteration,
            r.epoch,
            r.lr,
            r.task_loss,
            r.ckd_loss,
            r.meta_loss.map(|v| v.to_string()).unwrap_or_default()
        ));
        for w in &r.iwv {
            out.push_str(&format!(",{w}"));
        }
        out.push('\n');
    }
    out
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
    fn schedules() {
        let s = LrSchedule::Step {
            lr: 1e-3,
            every: 20,
            gamma: 0.9,
        };
        assert_eq!(s.at(0, 0.0), 1e-3);
        assert!((s.at(19, 0.3) - 1e-3).abs() < 1e-15);
        assert!((s.at(20, 0.3) - 0.9e-3).abs() < 1e-15);
        assert!((s.at(45, 0.8) - 0.81e-3).abs() < 1e-15);
        let c = LrSchedule::Cosine { lr: 1e-2 };
        assert_eq!(c.at(0, 0.0), 1e-2);
        assert!((c.at(0, 0.5) - 0.5e-2).abs() < 1e-12);
        assert_eq!(iterations_per_epoch(1050, 64, true), 16);
        assert_eq!(iterations_per_epoch(1050, 64, false), 17);
    }
}
