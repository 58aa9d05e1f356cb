//! Seeded synthetic BraTS-like phantoms: the CPU default data set.
//!
//! A phantom is a head: an ellipsoidal skull/scalp shell, a thin CSF layer, a brain with a
//! smooth grey/white-matter texture and two ventricles, and a tumour of three nested
//! sub-regions at a random position and size (BraTS 2018 labels):
//! necrotic core NCR (1) inside an enhancing rim ET (4) inside edema ED (2).
//!
//! Contrast is chosen so that modality importance is real and known ([`TISSUE_INTENSITY`]):
//! - ET is bright only in T1c; in Flair, T1 and T2 it is within ~5 % of the edema;
//! - NCR is dark in T1c (and a little different from edema in the others);
//! - edema (and the whole tumour) is bright in Flair and T2.
//!
//! So ET and TC need T1c, WT is carried by Flair/T2. Each case also gets per-modality
//! global intensity scaling, per-tissue contrast jitter, a smooth multiplicative bias
//! field and Gaussian noise. Outside the head every modality is exactly 0 (the
//! normalisation's background); inside it voxels are integers ≥ 1 so the int16 files hold
//! exactly the in-memory values.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::brats::{Case, LabelConvention, MODALITY_SUFFIXES, SEG_SUFFIX};
use crate::error::{Result, VolumeError};
use crate::nifti_io::{StorageType, write_labels_like, write_volume_as};
use crate::volume::{Header, Volume, voxel_count};

/// Configuration of the phantom generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhantomConfig {
    /// Grid size (i, j, k).
    pub size: [usize; 3],
    /// Voxel spacing in mm (written to the header; shapes are in voxels).
    pub spacing: [f32; 3],
    /// Standard deviation of the Gaussian noise, as a fraction of the white-matter
    /// intensity of each modality.
    pub noise: f32,
    /// Maximum relative amplitude of the smooth multiplicative bias field (0.15 = ±15 %).
    pub bias_field: f32,
    /// Per-case, per-modality global intensity scale jitter (0.1 = ×[0.9, 1.1]).
    pub intensity_jitter: f32,
    /// Per-case, per-modality, per-tissue contrast jitter (0.05 = ±5 %).
    pub contrast_jitter: f32,
    /// Range of the whole-tumour radius as a fraction of the brain's smallest semi-axis.
    pub tumour_radius: [f32; 2],
    /// Make the enhancing rim patchy: where a smooth random field is negative the rim is
    /// non-enhancing tumour (label 1, NCR/NET), which looks like the enhancing rim in Flair,
    /// T1 and T2 and differs from it only in T1c. ET can then be told from the rest of the
    /// core only by T1c, not by its place inside the edema.
    #[serde(default)]
    pub enhancing_patches: bool,
    /// Flair as T2 with the fluid signal nulled (what FLAIR is): every tissue but CSF takes
    /// its T2 intensity, CSF stays dark. The tumour then looks the same in Flair and T2 (the
    /// default Flair shows the necrotic core darker than the edema); only the dark CSF still
    /// sets Flair apart.
    #[serde(default)]
    pub flair_as_t2: bool,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            size: [64, 64, 64],
            spacing: [1.0; 3],
            noise: 0.05,
            bias_field: 0.15,
            intensity_jitter: 0.1,
            contrast_jitter: 0.05,
            tumour_radius: [0.3, 0.5],
            enhancing_patches: false,
            flair_as_t2: false,
        }
    }
}

/// Tissue classes of a phantom (ground truth beyond the labels, for tests and plots).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tissue {
    /// Outside the head (all modalities 0).
    Background = 0,
    /// Skull and scalp shell.
    Skull = 1,
    /// Cerebrospinal fluid (outer layer and ventricles).
    Csf = 2,
    /// Grey matter.
    GreyMatter = 3,
    /// White matter.
    WhiteMatter = 4,
    /// Edema (label 2).
    Edema = 5,
    /// Necrotic core (label 1).
    Necrosis = 6,
    /// Enhancing tumour (label 4).
    Enhancing = 7,
    /// Non-enhancing tumour core in the rim (label 1; only with `enhancing_patches`).
    NonEnhancing = 8,
}

/// Mean intensity of each tissue (rows: [`Tissue`] 0..=8) in each modality (columns:
/// Flair, T1, T1c, T2), before jitter, bias and noise.
pub const TISSUE_INTENSITY: [[f32; 4]; 9] = [
    [0.0, 0.0, 0.0, 0.0],          // background
    [180.0, 650.0, 650.0, 250.0],  // skull / scalp
    [60.0, 180.0, 180.0, 1100.0],  // CSF
    [360.0, 420.0, 430.0, 520.0],  // grey matter
    [300.0, 560.0, 570.0, 380.0],  // white matter
    [680.0, 380.0, 390.0, 820.0],  // edema
    [470.0, 300.0, 200.0, 900.0],  // necrosis: dark in T1c
    [645.0, 395.0, 1050.0, 790.0], // enhancing: bright only in T1c
    [645.0, 395.0, 390.0, 790.0],  // non-enhancing rim: the enhancing rim without the T1c
];

/// A generated case.
#[derive(Debug, Clone, PartialEq)]
pub struct Phantom {
    /// Grid (i, j, k).
    pub dims: [usize; 3],
    /// Raw (un-normalised, integer-valued) modalities in Flair, T1, T1c, T2 order.
    pub modalities: [Volume; 4],
    /// Labels, BraTS 2018 convention (0, 1 NCR, 2 ED, 4 ET).
    ///
    /// # Shapes
    /// `[dk, dj, di]` flattened.
    pub seg: Vec<u8>,
    /// Tissue of every voxel.
    pub tissue: Vec<Tissue>,
    /// Header to write the case with ([`Header::synthetic`]).
    pub header: Header,
}

/// SplitMix64: derives independent seeds from one seed and a stream number.
pub fn derive_seed(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A standard normal sample (Box–Muller).
fn normal<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    let u1: f64 = rng.random::<f64>().max(1e-300);
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// A smooth random field: a sum of a few plane waves (unit amplitude overall).
struct Waves {
    waves: Vec<([f32; 3], f32, f32)>, // (frequency vector, phase, amplitude)
}

impl Waves {
    fn new<R: Rng + ?Sized>(rng: &mut R, n: usize, freq: (f32, f32)) -> Self {
        let waves = (0..n)
            .map(|_| {
                let dir = [normal(rng), normal(rng), normal(rng)];
                let norm = (dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2])
                    .sqrt()
                    .max(1e-6);
                let f = rng.random_range(freq.0..freq.1);
                (
                    dir.map(|d| d / norm * f),
                    rng.random_range(0.0..std::f32::consts::TAU),
                    1.0 / n as f32,
                )
            })
            .collect();
        Self { waves }
    }

    fn at(&self, p: [f32; 3]) -> f32 {
        self.waves
            .iter()
            .map(|(f, ph, a)| a * (f[0] * p[0] + f[1] * p[1] + f[2] * p[2] + ph).sin())
            .sum()
    }
}

/// Geometry of one phantom (everything random except the noise).
struct Geometry {
    head_c: [f32; 3],
    head_r: [f32; 3],
    texture: Waves,
    ventricles: [([f32; 3], [f32; 3]); 2],
    tumour_c: [f32; 3],
    tumour_scale: [f32; 3],
    r_wt: f32,
    r_et: f32,
    r_ncr: f32,
    lobes_core: Waves,
    lobes_edema: Waves,
    /// Where negative, the rim does not enhance (`None`: the whole rim enhances).
    patches: Option<Waves>,
}

const BRAIN_FRACTION: f32 = 0.86;
const CSF_FRACTION: f32 = 0.90;

impl Geometry {
    fn new<R: Rng + ?Sized>(cfg: &PhantomConfig, rng: &mut R) -> Self {
        let s = cfg.size.map(|n| n as f32);
        let jit = |rng: &mut R, a: f32| 1.0 + rng.random_range(-a..a);
        let head_c = [0, 1, 2].map(|d| s[d] / 2.0 * jit(rng, 0.03));
        let base = [0.40, 0.45, 0.40];
        let head_r = [0, 1, 2].map(|d| s[d] * base[d] * jit(rng, 0.05));
        let brain_r = head_r.map(|r| r * BRAIN_FRACTION);
        let brain_min = brain_r.iter().cloned().fold(f32::MAX, f32::min);
        // Ventricles: two small ellipsoids left and right of the centre.
        let off = brain_r[0] * 0.18;
        let vr = [brain_r[0] * 0.10, brain_r[1] * 0.28, brain_r[2] * 0.16];
        let ventricles = [
            ([head_c[0] - off, head_c[1], head_c[2]], vr),
            ([head_c[0] + off, head_c[1], head_c[2]], vr),
        ];
        // Tumour centre: uniform in the inner part of the brain ellipsoid.
        let tumour_c = loop {
            let u = [0; 3].map(|_| rng.random_range(-1.0f32..1.0));
            if u.iter().map(|x| x * x).sum::<f32>() <= 1.0 {
                break [0, 1, 2].map(|d| head_c[d] + u[d] * brain_r[d] * 0.55);
            }
        };
        let (lo, hi) = (
            cfg.tumour_radius[0],
            cfg.tumour_radius[1].max(cfg.tumour_radius[0]),
        );
        let r_wt = brain_min
            * if hi > lo {
                rng.random_range(lo..hi)
            } else {
                lo
            };
        let r_et = r_wt * rng.random_range(0.5..0.65);
        let r_ncr = r_et * rng.random_range(0.5..0.7);
        let tumour_scale = [0; 3].map(|_| rng.random_range(0.8f32..1.25));
        Self {
            head_c,
            head_r,
            texture: Waves::new(rng, 6, (0.15, 0.45)),
            ventricles,
            tumour_c,
            tumour_scale,
            r_wt,
            r_et,
            r_ncr,
            lobes_core: Waves::new(rng, 3, (1.0, 3.0)),
            lobes_edema: Waves::new(rng, 3, (1.0, 3.0)),
            // Drawn last so that the rest of a phantom is the same with and without patches.
            patches: cfg
                .enhancing_patches
                .then(|| Waves::new(rng, 4, (0.25, 0.6))),
        }
    }

    /// Tissue and white-matter weight (for grey/white mixing) at voxel centre `p`.
    fn at(&self, p: [f32; 3]) -> (Tissue, f32) {
        let rho = |c: [f32; 3], r: [f32; 3]| -> f32 {
            (0..3)
                .map(|d| ((p[d] - c[d]) / r[d]).powi(2))
                .sum::<f32>()
                .sqrt()
        };
        let rh = rho(self.head_c, self.head_r);
        if rh >= 1.0 {
            return (Tissue::Background, 0.0);
        }
        if rh >= CSF_FRACTION {
            return (Tissue::Skull, 0.0);
        }
        if rh >= BRAIN_FRACTION {
            return (Tissue::Csf, 0.0);
        }
        // Inside the brain: tumour first.
        let d = [0, 1, 2].map(|a| (p[a] - self.tumour_c[a]) / self.tumour_scale[a]);
        let r = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        let u = if r > 1e-6 { d.map(|x| x / r) } else { [0.0; 3] };
        let rc = r / (1.0 + 0.12 * self.lobes_core.at(u));
        let re = r / (1.0 + 0.30 * self.lobes_edema.at(u));
        if rc < self.r_ncr {
            return (Tissue::Necrosis, 0.0);
        }
        if rc < self.r_et {
            return match &self.patches {
                Some(w) if w.at(p) < 0.0 => (Tissue::NonEnhancing, 0.0),
                _ => (Tissue::Enhancing, 0.0),
            };
        }
        if re < self.r_wt {
            return (Tissue::Edema, 0.0);
        }
        if self.ventricles.iter().any(|&(c, r)| rho(c, r) < 1.0) {
            return (Tissue::Csf, 0.0);
        }
        // Grey/white texture; a grey cortical rim near the brain surface.
        let t = self.texture.at(p);
        let mut w = ((t + 0.3) / 0.6).clamp(0.0, 1.0);
        let rb = rh / BRAIN_FRACTION;
        if rb > 0.85 {
            w *= ((1.0 - rb) / 0.15).clamp(0.0, 1.0);
        }
        let tissue = if w >= 0.5 {
            Tissue::WhiteMatter
        } else {
            Tissue::GreyMatter
        };
        (tissue, w)
    }
}

/// Generates one phantom; same `cfg` and `seed`, same phantom (bit for bit, any thread
/// count).
///
/// # Shapes
/// Every modality and `seg` have `dims = cfg.size` (i, j, k).
pub fn make_phantom(cfg: &PhantomConfig, seed: u64) -> Result<Phantom> {
    let dims = cfg.size;
    if dims.iter().any(|&n| n < 8) {
        return Err(VolumeError::Invalid(format!(
            "phantom size {dims:?}: every axis needs at least 8 voxels"
        )));
    }
    let finite = [
        cfg.noise,
        cfg.bias_field,
        cfg.intensity_jitter,
        cfg.contrast_jitter,
    ];
    if finite.iter().any(|x| !x.is_finite() || *x < 0.0)
        || cfg.bias_field >= 1.0
        || cfg.intensity_jitter >= 1.0
        || cfg.contrast_jitter >= 1.0
        || !(cfg.tumour_radius[0] > 0.0 && cfg.tumour_radius[1] <= 1.0)
    {
        return Err(VolumeError::Invalid(format!(
            "phantom config out of range (noise, bias_field, jitters must be >= 0 and < 1; \
             0 < tumour_radius <= 1): {cfg:?}"
        )));
    }
    let header = Header::synthetic(dims, cfg.spacing)?;
    let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 0));
    let geo = Geometry::new(cfg, &mut rng);
    let n = voxel_count(dims);
    let slab = dims[0] * dims[1];

    // Tissue map and grey/white weight, in parallel over k-slabs.
    let mut tissue = vec![Tissue::Background; n];
    let mut wm = vec![0.0f32; n];
    tissue
        .par_chunks_mut(slab)
        .zip(wm.par_chunks_mut(slab))
        .enumerate()
        .for_each(|(k, (ts, ws))| {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let (t, w) = geo.at([i as f32 + 0.5, j as f32 + 0.5, k as f32 + 0.5]);
                    ts[i + dims[0] * j] = t;
                    ws[i + dims[0] * j] = w;
                }
            }
        });
    let convention = LabelConvention::Brats2018;
    let seg: Vec<u8> = tissue
        .iter()
        .map(|t| match t {
            Tissue::Edema => convention.ed(),
            Tissue::Necrosis | Tissue::NonEnhancing => convention.ncr(),
            Tissue::Enhancing => convention.et(),
            _ => 0,
        })
        .collect();

    // Per-modality intensities: each modality has its own RNG stream.
    let mods: Vec<Volume> = (0..4usize)
        .into_par_iter()
        .map(|m| {
            let mut rng = ChaCha8Rng::seed_from_u64(derive_seed(seed, 1 + m as u64));
            let scale = 1.0 + rng.random_range(-1.0..=1.0f32) * cfg.intensity_jitter;
            // The table column of tissue row `r` (Flair reads T2's but for CSF with flair_as_t2).
            let column = |r: usize| {
                if cfg.flair_as_t2 && m == 0 && r != Tissue::Csf as usize {
                    3
                } else {
                    m
                }
            };
            let table: Vec<f32> = TISSUE_INTENSITY
                .iter()
                .enumerate()
                .map(|(r, row)| {
                    row[column(r)] * (1.0 + rng.random_range(-1.0..=1.0f32) * cfg.contrast_jitter)
                })
                .collect();
            let c: [f32; 6] = [0; 6].map(|_| rng.random_range(-1.0..=1.0f32));
            let norm = c.iter().map(|x| x.abs()).sum::<f32>().max(1e-6);
            let wm_row = Tissue::WhiteMatter as usize;
            let sigma = cfg.noise * TISSUE_INTENSITY[wm_row][column(wm_row)] * scale;
            let half = dims.map(|x| x as f32 / 2.0);
            let mut data = vec![0.0f32; n];
            for (idx, out) in data.iter_mut().enumerate() {
                let t = tissue[idx];
                if t == Tissue::Background {
                    continue;
                }
                let [i, j, k] = crate::volume::ijk_of(dims, idx);
                let x = [i, j, k].map(|a| a as f32 + 0.5);
                let q = [0, 1, 2].map(|d| (x[d] - half[d]) / half[d]);
                let poly = c[0] * q[0]
                    + c[1] * q[1]
                    + c[2] * q[2]
                    + c[3] * q[0] * q[1]
                    + c[4] * q[1] * q[2]
                    + c[5] * q[0] * q[2];
                let bias = 1.0 + cfg.bias_field * poly / norm;
                let base = match t {
                    Tissue::GreyMatter | Tissue::WhiteMatter => {
                        let w = wm[idx];
                        table[Tissue::GreyMatter as usize] * (1.0 - w)
                            + table[Tissue::WhiteMatter as usize] * w
                    }
                    t => table[t as usize],
                };
                let v = base * scale * bias + sigma * normal(&mut rng);
                *out = v.round().max(1.0);
            }
            Volume { dims, data }
        })
        .collect();
    let modalities: [Volume; 4] = mods.try_into().expect("four modalities");
    Ok(Phantom {
        dims,
        modalities,
        seg,
        tissue,
        header,
    })
}

/// Id of phantom case number `index` in a data set: `phantom_0000`, `phantom_0001`, ...
pub fn phantom_case_id(index: usize) -> String {
    format!("phantom_{index:04}")
}

/// Writes `n_cases` phantoms under `root` in the flat case layout
/// (`<root>/<id>/<id>_{flair,t1,t1ce,t2}.nii.gz` as int16, `<id>_seg.nii.gz` as uint8),
/// so [`crate::brats::discover_cases`] and [`crate::brats::load_case`] read them.
/// Case `c` uses seed `derive_seed(seed, c)`; cases are generated one after the other.
pub fn write_phantom_dataset(
    root: impl AsRef<Path>,
    n_cases: usize,
    cfg: &PhantomConfig,
    seed: u64,
) -> Result<Vec<Case>> {
    let root = root.as_ref();
    let mut cases = Vec::with_capacity(n_cases);
    for c in 0..n_cases {
        let id = phantom_case_id(c);
        let dir = root.join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| VolumeError::Io {
            path: dir.clone(),
            source: e,
        })?;
        let p = make_phantom(cfg, derive_seed(seed, c as u64))?;
        let writes: Vec<Result<()>> = (0..5usize)
            .into_par_iter()
            .map(|m| {
                if m < 4 {
                    let path = dir.join(format!("{id}_{}.nii.gz", MODALITY_SUFFIXES[m]));
                    write_volume_as(path, &p.modalities[m], &p.header, StorageType::I16)
                } else {
                    let path = dir.join(format!("{id}_{SEG_SUFFIX}.nii.gz"));
                    write_labels_like(path, &p.seg, &p.header)
                }
            })
            .collect();
        for w in writes {
            w?;
        }
        cases.push(Case::from_dir(&dir, None)?);
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::brats::{discover_cases, load_case};
    use crate::nifti_io::test_support::TempDir;
    use crate::nifti_io::{read_labels, read_volume};

    fn mean_where(v: &Volume, tissue: &[Tissue], want: &[Tissue]) -> f64 {
        let (mut s, mut n) = (0.0f64, 0usize);
        for (x, t) in v.data.iter().zip(tissue) {
            if want.contains(t) {
                s += f64::from(*x);
                n += 1;
            }
        }
        s / n as f64
    }

    #[test]
    fn phantoms_are_deterministic_with_known_contrast() {
        let cfg = PhantomConfig::default();
        let t = std::time::Instant::now();
        let a = make_phantom(&cfg, 11).unwrap();
        eprintln!("make_phantom 64³: {:?}", t.elapsed());
        assert_eq!(
            a,
            make_phantom(&cfg, 11).unwrap(),
            "same seed, same phantom"
        );
        assert_ne!(a.seg, make_phantom(&cfg, 12).unwrap().seg);
        let big = PhantomConfig {
            size: [96, 96, 96],
            ..cfg.clone()
        };
        let t = std::time::Instant::now();
        let b = make_phantom(&big, 11).unwrap();
        eprintln!("make_phantom 96³: {:?}", t.elapsed());
        assert_eq!(b.dims, [96, 96, 96]);

        use Tissue::*;
        let brain = [GreyMatter, WhiteMatter];
        for seed in 0..8 {
            let p = make_phantom(&cfg, seed).unwrap();
            let count = |l: u8| p.seg.iter().filter(|&&x| x == l).count();
            let (ncr, ed, et) = (count(1), count(2), count(4));
            assert!(
                ncr >= 10 && et >= 50 && ed >= 200,
                "seed {seed}: {ncr} {ed} {et}"
            );
            assert!(p.seg.iter().all(|&l| matches!(l, 0 | 1 | 2 | 4)));
            let [flair, t1, t1c, t2] = &p.modalities;
            // Background exactly 0 outside the head, ≥ 1 inside.
            for v in &p.modalities {
                assert!(
                    v.data
                        .iter()
                        .zip(&p.tissue)
                        .all(|(&x, &t)| (t == Background) == (x == 0.0))
                );
                assert!(v.data.iter().all(|x| x.fract() == 0.0));
            }
            let m = |v: &Volume, t: &[Tissue]| mean_where(v, &p.tissue, t);
            // ET bright in T1c against edema, necrosis and brain; not in T1 (nor Flair/T2).
            assert!(m(t1c, &[Enhancing]) > 1.8 * m(t1c, &[Edema]), "seed {seed}");
            assert!(m(t1c, &[Enhancing]) > 1.6 * m(t1c, &brain), "seed {seed}");
            assert!(
                m(t1c, &[Necrosis]) < 0.7 * m(t1c, &[Edema]),
                "NCR dark in T1c"
            );
            for v in [t1, flair, t2] {
                let (e, d) = (m(v, &[Enhancing]), m(v, &[Edema]));
                assert!((e - d).abs() < 0.15 * d, "seed {seed}: ET {e} vs ED {d}");
            }
            // Edema bright in Flair and T2.
            assert!(m(flair, &[Edema]) > 1.6 * m(flair, &brain), "seed {seed}");
            assert!(m(t2, &[Edema]) > 1.5 * m(t2, &brain), "seed {seed}");
        }
    }

    #[test]
    fn patchy_enhancement_differs_from_the_rim_only_in_t1c() {
        use Tissue::*;
        let plain = PhantomConfig::default();
        let patchy = PhantomConfig {
            enhancing_patches: true,
            ..plain.clone()
        };
        let (mut et_total, mut net_total) = (0, 0);
        for seed in 0..6 {
            let a = make_phantom(&plain, seed).unwrap();
            let b = make_phantom(&patchy, seed).unwrap();
            assert_eq!(b, make_phantom(&patchy, seed).unwrap(), "deterministic");
            // Same geometry: only rim voxels change, from enhancing to non-enhancing (NCR).
            for ((ta, tb), (la, lb)) in a.tissue.iter().zip(&b.tissue).zip(a.seg.iter().zip(&b.seg))
            {
                if ta != tb {
                    assert_eq!((*ta, *tb), (Enhancing, NonEnhancing));
                    assert_eq!((*la, *lb), (4, 1));
                }
            }
            let count = |t: Tissue| b.tissue.iter().filter(|&&x| x == t).count();
            et_total += count(Enhancing);
            net_total += count(NonEnhancing);
            if count(Enhancing) >= 50 && count(NonEnhancing) >= 50 {
                let m = |v: &Volume, t: Tissue| mean_where(v, &b.tissue, &[t]);
                let [flair, t1, t1c, t2] = &b.modalities;
                for v in [flair, t1, t2] {
                    let (e, n) = (m(v, Enhancing), m(v, NonEnhancing));
                    assert!((e - n).abs() < 0.1 * e, "seed {seed}: ET {e} vs NET {n}");
                }
                assert!(
                    m(t1c, Enhancing) > 1.8 * m(t1c, NonEnhancing),
                    "seed {seed}"
                );
            }
        }
        // Both parts of the rim occur over the seeds.
        assert!(et_total > 500 && net_total > 500, "{et_total} {net_total}");
    }

    #[test]
    fn flair_as_t2_matches_t2_everywhere_but_in_csf() {
        use Tissue::*;
        let clean = PhantomConfig {
            size: [32; 3],
            noise: 0.0,
            bias_field: 0.0,
            intensity_jitter: 0.0,
            contrast_jitter: 0.0,
            ..PhantomConfig::default()
        };
        let as_t2 = PhantomConfig {
            flair_as_t2: true,
            ..clean.clone()
        };
        for seed in 0..3 {
            let a = make_phantom(&clean, seed).unwrap();
            let b = make_phantom(&as_t2, seed).unwrap();
            // Only Flair changes.
            assert_eq!((&a.tissue, &a.seg), (&b.tissue, &b.seg), "seed {seed}");
            assert_eq!(a.modalities[1..], b.modalities[1..], "seed {seed}");
            let [flair, _, _, t2] = &b.modalities;
            let (mut csf, mut tumour) = (0, 0);
            for (idx, &t) in b.tissue.iter().enumerate() {
                let (f, t2v) = (flair.data[idx], t2.data[idx]);
                match t {
                    Csf => {
                        csf += 1;
                        assert_eq!(f, TISSUE_INTENSITY[Csf as usize][0], "seed {seed}");
                        assert_eq!(t2v, TISSUE_INTENSITY[Csf as usize][3], "seed {seed}");
                    }
                    _ => assert_eq!(f, t2v, "seed {seed}, voxel {idx} ({t:?})"),
                }
                if matches!(t, Edema | Necrosis) {
                    tumour += 1;
                    // The default Flair differs from T2 there (edema 680 vs 820, NCR 470 vs 900).
                    assert_ne!(a.modalities[0].data[idx], t2v, "seed {seed}");
                }
            }
            assert!(csf > 100 && tumour > 100, "seed {seed}: {csf} {tumour}");
        }
        // With noise and jitter the draws stay in step: T1, T1c, T2 and labels as before.
        let a = make_phantom(&PhantomConfig::default(), 7).unwrap();
        let b = make_phantom(
            &PhantomConfig {
                flair_as_t2: true,
                ..PhantomConfig::default()
            },
            7,
        )
        .unwrap();
        assert_eq!(a.modalities[1..], b.modalities[1..]);
        assert_ne!(a.modalities[0], b.modalities[0]);
    }

    #[test]
    fn phantom_dataset_is_written_and_read_back_through_the_case_reader() {
        let tmp = TempDir::new("phantom");
        let cfg = PhantomConfig {
            size: [40, 44, 36],
            ..PhantomConfig::default()
        };
        let cases = write_phantom_dataset(tmp.path(), 3, &cfg, 5).unwrap();
        assert_eq!(cases.len(), 3);
        let found = discover_cases(tmp.path()).unwrap();
        assert_eq!(found, cases);
        for (c, case) in cases.iter().enumerate() {
            let p = make_phantom(&cfg, derive_seed(5, c as u64)).unwrap();
            for m in 0..4 {
                let (v, h) = read_volume(&case.modalities[m]).unwrap();
                assert_eq!(h.datatype(), 4, "int16 images");
                assert_eq!(v, p.modalities[m], "case {c} modality {m}");
            }
            let (seg, dims, h) =
                read_labels(case.seg.as_ref().unwrap(), LabelConvention::Brats2018).unwrap();
            assert_eq!((h.datatype(), dims), (2, cfg.size), "uint8 seg");
            assert_eq!(seg, p.seg);
            let loaded = load_case(case, LabelConvention::Brats2018).unwrap();
            assert_eq!(loaded.seg.as_ref(), Some(&p.seg));
            // Normalised: background stays 0, head voxels have mean ~0.
            let t1c = &loaded.modalities[2];
            let fg: Vec<f32> = t1c.data.iter().cloned().filter(|&x| x != 0.0).collect();
            let mean = fg.iter().map(|&x| f64::from(x)).sum::<f64>() / fg.len() as f64;
            assert!(mean.abs() < 0.05, "{mean}");
        }
        // Invalid configs are errors, not panics.
        let bad = PhantomConfig {
            size: [4, 64, 64],
            ..PhantomConfig::default()
        };
        assert!(make_phantom(&bad, 0).is_err());
        let bad = PhantomConfig {
            noise: f32::NAN,
            ..PhantomConfig::default()
        };
        assert!(make_phantom(&bad, 0).is_err());
    }
}
