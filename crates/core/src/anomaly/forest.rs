//! Isolation Forest (Liu, Ting & Zhou, 2008), trained and scored without allocation per row.
//!
//! - `t` trees, each grown on `psi` rows drawn without replacement, to a height limit of
//!   `ceil(log2 psi)`. A node splits on a feature drawn at random among those that are not
//!   constant in it, at a threshold drawn uniformly between that feature's minimum and maximum
//!   there; a node whose rows are all equal is a leaf.
//! - The path length of a row is the depth of the leaf it reaches plus `c(size)` of that leaf
//!   (the paper's correction for the rows a height-limited leaf still holds).
//! - The score is `s(x) = 2^(-E(h(x)) / c(psi))`, in (0, 1): higher means more anomalous.
//! - `c(n) = 2 H(n - 1) - 2 (n - 1) / n` with `H(i) = ln(i) + γ`, `c(2) = 1`, `c(1) = c(0) = 0`,
//!   as scikit-learn computes it.
//! - The extended variant (Hariri et al., 2018) splits on a random hyperplane through a random
//!   point of the node's bounding box instead of one feature. Unlike the paper, custos draws the
//!   hyperplanes in standardized coordinates (each feature centred on its mean and divided by its
//!   standard deviation), so that a feature measured in large units does not decide every split;
//!   the standardization is folded into the stored normals, so scoring reads raw values.
//!
//! Where custos differs from scikit-learn: the random source (a seeded ChaCha8, so a seed gives
//! the same forest on every platform), a row goes left when its value is strictly below the
//! threshold (scikit-learn: below or equal; ties have probability zero for continuous data), and
//! a node in which the drawn feature is constant draws another one instead of becoming a leaf
//! early. Values are f64 throughout (scikit-learn scores in f32). A sample larger than the data
//! is refused (scikit-learn quietly uses every row instead).
//!
//! Layout: one flat array of 16-byte nodes per forest. The two children of a node sit side by
//! side (`left`, `left + 1`), and a leaf points to itself with an infinite threshold, so scoring
//! walks every tree for exactly `height_limit` steps without a branch on the data: a block of
//! rows goes down one tree at a time, their walks independent of each other (the CPU overlaps
//! them) and the tree hot in cache. Nothing is allocated per row.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Why a forest cannot be trained, decoded or a row scored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForestError {
    #[error("no rows to train on")]
    Empty,
    #[error("no features: every row has 0 values")]
    NoFeatures,
    #[error("row {row} has {got} values, not {expected}")]
    Ragged {
        row: usize,
        got: usize,
        expected: usize,
    },
    #[error("row {row}, feature {feature} is {value}: only finite numbers can be scored")]
    NotFinite {
        row: usize,
        feature: usize,
        value: f64,
    },
    #[error("sample_size {psi} is larger than the {rows} rows to train on")]
    SampleTooLarge { psi: usize, rows: usize },
    #[error("{what} must be at least {least}, not {got}")]
    TooSmall {
        what: &'static str,
        least: usize,
        got: usize,
    },
    #[error("{what} must be at most {most}, not {got}")]
    TooLarge {
        what: &'static str,
        most: usize,
        got: usize,
    },
    #[error("the model expects {expected} features, not {got}")]
    FeatureCount { expected: usize, got: usize },
    #[error("not a custos forest: {0}")]
    Corrupt(&'static str),
}

/// Training parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub trees: usize,
    pub sample_size: usize,
    pub seed: u64,
    pub extended: bool,
}

/// The most trees and the largest sample a forest may have: beyond them a model would take
/// gigabytes, and the paper finds nothing gained past a few hundred of either.
pub const MAX_TREES: usize = 10_000;
pub const MAX_SAMPLE_SIZE: usize = 1 << 20;
pub const MAX_FEATURES: usize = 1_000;
/// The most rows all trees draw together (n_trees × sample_size): bounds a forest's memory
/// (about 32 bytes a drawn row at most) whatever the parameters.
pub const MAX_DRAWN_ROWS: usize = 10_000_000;
/// The complete layout is kept only up to this many bottom positions over all trees (24 bytes
/// each): larger forests are scored on the flat nodes.
const COMPLETE_MAX_BOTTOM: usize = 1 << 22;

/// One node. An inner node sends `x` to `left` when `x[feature] < threshold` (the extended
/// variant: when `normal · x < threshold`, the normal starting at `normals[feature]`), else to
/// `left + 1`. A leaf has `left` = itself and an infinite threshold.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    feature: u32,
    left: u32,
    threshold: f64,
}

/// A trained forest.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    features: usize,
    sample_size: usize,
    extended: bool,
    /// Steps every walk takes: `ceil(log2 sample_size)`.
    height_limit: usize,
    /// Where each tree's root is in `nodes`; tree `t` owns `roots[t]..roots[t + 1]`.
    roots: Vec<u32>,
    nodes: Vec<Node>,
    /// For a leaf, its depth plus `c(rows it holds)`; for an inner node 0 (never read).
    path: Vec<f64>,
    /// The training rows that reached each node (the encoding keeps the leaves' only).
    sizes: Vec<u32>,
    /// Extended variant: the hyperplanes' normals, `features` values each; the first one is all
    /// zeros, the leaves' (so that `0 < inf` keeps a finished walk where it is).
    normals: Vec<f64>,
    /// Extended variant: each feature's mean and standard deviation in training (1 if
    /// constant), folded into the normals; read back to weigh features in explanations.
    center: Vec<f64>,
    scale: Vec<f64>,
    /// The standard variant's trees re-laid for scoring (derived, not encoded).
    complete: Option<Complete>,
}

/// A standard forest's trees as complete binary trees of depth `height_limit`: the children of
/// position `i` are `2i + 1` and `2i + 2`, so a walk computes where to go instead of loading a
/// child index. A leaf above the last level becomes a chain of splits that send every row left
/// (threshold +inf), with the leaf's path length at each bottom position under it. Used while
/// trees stay small (`height_limit` up to COMPLETE_MAX_HEIGHT, i.e. sample sizes to 4,096).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Complete {
    /// Splits per tree: `2^height_limit - 1`.
    pub(super) inner: usize,
    pub(super) height: usize,
    /// Features per row; every split's feature is below it.
    pub(super) width: usize,
    /// Each split's threshold and feature (i64: what a vector gather reads).
    pub(super) thresholds: Vec<f64>,
    pub(super) features: Vec<i64>,
    /// Path length at each bottom position, `2^height_limit` per tree.
    pub(super) bottom: Vec<f64>,
}

const COMPLETE_MAX_HEIGHT: usize = 12;
/// Walks kept side by side on the complete layout.
const LANES: usize = 8;

/// Mean, standard deviation, minimum and maximum of one feature over the training rows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeatureStats {
    pub mean: f64,
    pub std_dev: f64,
    pub min: f64,
    pub max: f64,
}

/// The average path length of an unsuccessful search in a binary search tree of `n` rows.
pub fn c(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

/// Checks a row-major matrix of `features` columns and returns its row count.
pub fn rows_of(data: &[f64], features: usize) -> Result<usize, ForestError> {
    if features == 0 {
        return Err(ForestError::NoFeatures);
    }
    if data.is_empty() {
        return Err(ForestError::Empty);
    }
    if !data.len().is_multiple_of(features) {
        return Err(ForestError::Ragged {
            row: data.len() / features,
            got: data.len() % features,
            expected: features,
        });
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(ForestError::NotFinite {
            row: i / features,
            feature: i % features,
            value: data[i],
        });
    }
    Ok(data.len() / features)
}

/// Per-feature statistics of a row-major matrix (Welford's running mean and variance, population
/// standard deviation).
pub fn feature_stats(data: &[f64], features: usize) -> Result<Vec<FeatureStats>, ForestError> {
    let rows = rows_of(data, features)?;
    let mut stats = vec![
        FeatureStats {
            mean: 0.0,
            std_dev: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        };
        features
    ];
    let mut m2 = vec![0.0; features];
    for (i, row) in data.chunks_exact(features).enumerate() {
        let n = (i + 1) as f64;
        for ((s, m2), &v) in stats.iter_mut().zip(m2.iter_mut()).zip(row) {
            let delta = v - s.mean;
            s.mean += delta / n;
            *m2 += delta * (v - s.mean);
            s.min = s.min.min(v);
            s.max = s.max.max(v);
        }
    }
    for (s, m2) in stats.iter_mut().zip(m2) {
        s.std_dev = (m2 / rows as f64).sqrt();
    }
    Ok(stats)
}

struct Builder<'a> {
    data: &'a [f64],
    features: usize,
    extended: bool,
    height_limit: usize,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    path: Vec<f64>,
    sizes: Vec<u32>,
    normals: Vec<f64>,
    /// Extended variant: each feature's mean and standard deviation (1 for a constant one); the
    /// hyperplanes are drawn in `(x - mean) / std_dev`.
    center: Vec<f64>,
    scale: Vec<f64>,
    /// Scratch: the features not constant in the node being split, with their range there.
    varying: Vec<(usize, f64, f64)>,
    /// Scratch: the rows of the node being split with their side of the hyperplane.
    sides: Vec<(bool, usize)>,
}

impl Builder<'_> {
    fn row(&self, row: usize) -> &[f64] {
        &self.data[row * self.features..(row + 1) * self.features]
    }

    /// A value in the coordinates splits are drawn in (standardized for the extended variant).
    fn coordinate(&self, row: usize, feature: usize) -> f64 {
        let v = self.data[row * self.features + feature];
        if self.extended {
            (v - self.center[feature]) / self.scale[feature]
        } else {
            v
        }
    }

    fn push_node(&mut self) -> u32 {
        let at = self.nodes.len() as u32;
        self.nodes.push(Node {
            feature: 0,
            left: at,
            threshold: f64::INFINITY,
        });
        self.path.push(0.0);
        self.sizes.push(0);
        at
    }

    /// Grows the subtree of `rows` (reordered in place) at node `at`, `depth` below the root.
    fn grow(&mut self, rows: &mut [usize], depth: usize, at: u32) {
        self.sizes[at as usize] = rows.len() as u32;
        let held = rows.len();
        let leaf = |b: &mut Self| b.path[at as usize] = depth as f64 + c(held);
        if depth >= self.height_limit || rows.len() <= 1 {
            return leaf(self);
        }
        self.varying.clear();
        for f in 0..self.features {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &r in rows.iter() {
                let v = self.coordinate(r, f);
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if lo < hi {
                self.varying.push((f, lo, hi));
            }
        }
        if self.varying.is_empty() {
            return leaf(self); // every row alike: nothing isolates them further
        }
        let (feature, threshold, split) = if self.extended {
            match self.hyperplane_split(rows) {
                Some(split) => split,
                None => return leaf(self), // every row projects alike: nothing separates them
            }
        } else {
            let (f, lo, hi) = self.varying[self.rng.random_range(0..self.varying.len())];
            let r = self.rng.random::<f64>();
            // A convex combination: no overflow between values near ±f64::MAX.
            let t = lo * (1.0 - r) + hi * r;
            // lo < t <= hi keeps both sides non-empty; a draw of exactly lo (or a rounding) moves
            // to the middle, and between adjacent values to the upper one.
            let t = if t > lo && t <= hi {
                t
            } else if lo / 2.0 + hi / 2.0 > lo {
                lo / 2.0 + hi / 2.0
            } else {
                hi
            };
            let split = partition(rows, |r| self.data[r * self.features + f] < t);
            (f as u32, t, split)
        };
        let left = self.push_node();
        self.push_node();
        self.nodes[at as usize] = Node {
            feature,
            left,
            threshold,
        };
        let (left_rows, right_rows) = rows.split_at_mut(split);
        self.grow(left_rows, depth + 1, left);
        self.grow(right_rows, depth + 1, left + 1);
    }

    /// A random hyperplane through a random point of the node's bounding box (standardized
    /// coordinates), folded back into raw ones: returns the normal's start in `normals`, the
    /// offset, and the split point of `rows`.
    fn hyperplane_split(&mut self, rows: &mut [usize]) -> Option<(u32, f64, usize)> {
        let start = self.normals.len();
        let mut offset = 0.0;
        for f in 0..self.features {
            let n = standard_normal(&mut self.rng);
            let (lo, hi) = match self.varying.iter().find(|v| v.0 == f) {
                Some(&(_, lo, hi)) => (lo, hi),
                None => {
                    let v = self.coordinate(rows[0], f);
                    (v, v)
                }
            };
            let r = self.rng.random::<f64>();
            let p = lo * (1.0 - r) + hi * r;
            // n · (x - m) / s = (n / s) · x - n m / s
            let folded = n / self.scale[f];
            self.normals.push(folded);
            offset += n * p + folded * self.center[f];
        }
        let mut sides = std::mem::take(&mut self.sides);
        sides.clear();
        let normal = &self.normals[start..start + self.features];
        sides.extend(rows.iter().map(|&r| (dot(normal, self.row(r)) < offset, r)));
        let mut split = partition_sides(&mut sides);
        if split == 0 || split == sides.len() || !offset.is_finite() {
            // The whole node fell on one side of a plane through its box (rows that project
            // alike, or a rounding): cut just above the smallest projection instead, so that the
            // node still shrinks; if every row projects alike, the node is a leaf.
            let projections: Vec<f64> = rows.iter().map(|&r| dot(normal, self.row(r))).collect();
            let least = projections.iter().copied().fold(f64::INFINITY, f64::min);
            let next = projections
                .iter()
                .copied()
                .filter(|&p| p > least)
                .fold(f64::INFINITY, f64::min);
            if !next.is_finite() || !least.is_finite() {
                self.normals.truncate(start);
                self.sides = sides;
                return None;
            }
            offset = next;
            sides.clear();
            sides.extend(rows.iter().map(|&r| (dot(normal, self.row(r)) < offset, r)));
            split = partition_sides(&mut sides);
        }
        for (slot, &(_, r)) in rows.iter_mut().zip(sides.iter()) {
            *slot = r;
        }
        self.sides = sides;
        Some((start as u32, offset, split))
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Moves the rows for which `below` holds to the front; returns how many there are.
fn partition(rows: &mut [usize], below: impl Fn(usize) -> bool) -> usize {
    let mut split = 0;
    for i in 0..rows.len() {
        if below(rows[i]) {
            rows.swap(i, split);
            split += 1;
        }
    }
    split
}

fn partition_sides(rows: &mut [(bool, usize)]) -> usize {
    let mut split = 0;
    for i in 0..rows.len() {
        if rows[i].0 {
            rows.swap(i, split);
            split += 1;
        }
    }
    split
}

/// Rows scored together: their walks down a tree are independent, so the CPU overlaps them.
pub(super) const BLOCK: usize = 64;

impl Forest {
    /// Trains a forest on `data`, row-major with `features` values per row.
    pub fn train(data: &[f64], features: usize, params: Params) -> Result<Forest, ForestError> {
        Forest::train_checking(data, features, params, || {})
    }

    /// [`Forest::train`], calling `each_tree` before growing each tree (where the backend
    /// handles cancel and statement_timeout).
    pub fn train_checking(
        data: &[f64],
        features: usize,
        params: Params,
        mut each_tree: impl FnMut(),
    ) -> Result<Forest, ForestError> {
        let rows = rows_of(data, features)?;
        let bounds = [
            ("n_trees", params.trees, 1, MAX_TREES),
            ("sample_size", params.sample_size, 2, MAX_SAMPLE_SIZE),
            ("features", features, 1, MAX_FEATURES),
        ];
        for (what, got, least, most) in bounds {
            if got < least {
                return Err(ForestError::TooSmall { what, least, got });
            }
            if got > most {
                return Err(ForestError::TooLarge { what, most, got });
            }
        }
        let drawn = params.trees.saturating_mul(params.sample_size);
        if drawn > MAX_DRAWN_ROWS {
            return Err(ForestError::TooLarge {
                what: "n_trees × sample_size",
                most: MAX_DRAWN_ROWS,
                got: drawn,
            });
        }
        if params.sample_size > rows {
            return Err(ForestError::SampleTooLarge {
                psi: params.sample_size,
                rows,
            });
        }
        let (center, scale) = if params.extended {
            let stats = feature_stats(data, features)?;
            // Values near ±f64::MAX overflow the moments: such a feature is left unscaled.
            let center = stats
                .iter()
                .map(|s| if s.mean.is_finite() { s.mean } else { 0.0 })
                .collect();
            let scale = stats
                .iter()
                .map(|s| {
                    if s.std_dev > 0.0 && s.std_dev.is_finite() {
                        s.std_dev
                    } else {
                        1.0
                    }
                })
                .collect();
            (center, scale)
        } else {
            (Vec::new(), Vec::new())
        };
        let psi = params.sample_size;
        let height_limit = height_limit(psi);
        let mut b = Builder {
            data,
            features,
            extended: params.extended,
            height_limit,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            nodes: Vec::with_capacity((params.trees * 2 * psi).min(1 << 20)),
            path: Vec::new(),
            sizes: Vec::new(),
            normals: if params.extended {
                vec![0.0; features]
            } else {
                Vec::new()
            },
            center,
            scale,
            varying: Vec::with_capacity(features),
            sides: Vec::new(),
        };
        let mut roots = Vec::with_capacity(params.trees);
        for _ in 0..params.trees {
            each_tree();
            let mut picked = sample(&mut b.rng, rows, psi).into_vec();
            let root = b.push_node();
            roots.push(root);
            b.grow(&mut picked, 0, root);
        }
        Ok(Forest {
            features,
            sample_size: psi,
            extended: params.extended,
            height_limit,
            roots,
            nodes: b.nodes,
            path: b.path,
            sizes: b.sizes,
            normals: b.normals,
            center: b.center,
            scale: b.scale,
            complete: None,
        }
        .with_complete_layout())
    }

    pub fn features(&self) -> usize {
        self.features
    }

    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    pub fn sample_size(&self) -> usize {
        self.sample_size
    }

    pub fn extended(&self) -> bool {
        self.extended
    }

    /// Checks that `rows` holds whole rows of finite values, `out.len()` of them.
    fn check_rows(&self, rows: &[f64], out: usize) -> Result<(), ForestError> {
        if rows.len() != out * self.features {
            return Err(ForestError::FeatureCount {
                expected: self.features,
                got: rows.len().checked_div(out).unwrap_or(rows.len()),
            });
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(ForestError::NotFinite {
                row: i / self.features,
                feature: i % self.features,
                value: rows[i],
            });
        }
        Ok(())
    }

    /// The anomaly score of one row, in (0, 1); higher is more anomalous.
    pub fn score(&self, x: &[f64]) -> Result<f64, ForestError> {
        let mut out = [0.0];
        self.score_rows(x, &mut out)?;
        Ok(out[0])
    }

    /// Scores `out.len()` rows, row-major in `rows`, into `out`.
    pub fn score_rows(&self, rows: &[f64], out: &mut [f64]) -> Result<(), ForestError> {
        self.check_rows(rows, out.len())?;
        let width = BLOCK * self.features;
        for (block, scores) in rows.chunks(width).zip(out.chunks_mut(BLOCK)) {
            let n = scores.len();
            let mut total = [0.0f64; BLOCK];
            if let Some(complete) = &self.complete {
                self.walk_complete(complete, block, &mut total[..n]);
            } else {
                self.walk_flat(block, &mut total[..n]);
            }
            for (o, t) in scores.iter_mut().zip(&total[..n]) {
                *o = self.score_of(*t);
            }
        }
        Ok(())
    }

    /// Adds each row's path length in every tree to `total`, on the complete layout.
    fn walk_complete(&self, complete: &Complete, block: &[f64], total: &mut [f64]) {
        if super::simd::walk_block(complete, self.features, block, total) {
            return;
        }
        // A row width known at compile time lets the compiler keep LANES walks in registers.
        macro_rules! by_width {
            ($($w:literal)*) => {
                match self.features {
                    $($w => self.walk_complete_fixed::<$w>(complete, block, total),)*
                    _ => self.walk_complete_any(complete, block, total),
                }
            };
        }
        by_width!(1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
    }

    /// [`Forest::walk_complete`] for rows of `W` features.
    fn walk_complete_fixed<const W: usize>(
        &self,
        complete: &Complete,
        block: &[f64],
        total: &mut [f64],
    ) {
        let inner = complete.inner;
        let full = total.len() / LANES;
        for ((thresholds, features), bottom) in complete
            .thresholds
            .chunks_exact(inner)
            .zip(complete.features.chunks_exact(inner))
            .zip(complete.bottom.chunks_exact(inner + 1))
        {
            for lane in 0..full {
                let rows = &block[lane * LANES * W..(lane + 1) * LANES * W];
                let mut at = [0usize; LANES];
                for _ in 0..self.height_limit {
                    for (k, pos) in at.iter_mut().enumerate() {
                        // min: the decoder guarantees feature < W; this just tells the compiler.
                        let v = rows[k * W + (features[*pos] as usize).min(W - 1)];
                        *pos = 2 * *pos + 1 + usize::from(v >= thresholds[*pos]);
                    }
                }
                for (t, &pos) in total[lane * LANES..].iter_mut().zip(at.iter()) {
                    *t += bottom[pos - inner];
                }
            }
        }
        let done = full * LANES;
        if done < total.len() {
            self.walk_complete_any(complete, &block[done * W..], &mut total[done..]);
        }
    }

    /// [`Forest::walk_complete`] for any row width.
    fn walk_complete_any(&self, complete: &Complete, block: &[f64], total: &mut [f64]) {
        let f = self.features;
        let inner = complete.inner;
        for ((thresholds, features), bottom) in complete
            .thresholds
            .chunks_exact(inner)
            .zip(complete.features.chunks_exact(inner))
            .zip(complete.bottom.chunks_exact(inner + 1))
        {
            for (lane_rows, lane_total) in block.chunks(LANES * f).zip(total.chunks_mut(LANES)) {
                let mut at = [0usize; LANES];
                for _ in 0..self.height_limit {
                    for (k, pos) in at.iter_mut().enumerate().take(lane_total.len()) {
                        let v = lane_rows[k * f + features[*pos] as usize];
                        *pos = 2 * *pos + 1 + usize::from(v >= thresholds[*pos]);
                    }
                }
                for (t, &pos) in lane_total.iter_mut().zip(at.iter()) {
                    *t += bottom[pos - inner];
                }
            }
        }
    }

    /// Adds each row's path length in every tree to `total`, walking the flat nodes.
    fn walk_flat(&self, block: &[f64], total: &mut [f64]) {
        let n = total.len();
        {
            for (t, &root) in self.roots.iter().enumerate() {
                let end = self
                    .roots
                    .get(t + 1)
                    .map_or(self.nodes.len(), |&e| e as usize);
                // Positions relative to the tree: its nodes are one slice.
                let tree = &self.nodes[root as usize..end];
                let mut at = [0u32; BLOCK];
                if self.extended {
                    self.walk(tree, root, &mut at[..n], |node, r| {
                        let s = node.feature as usize;
                        let f = self.features;
                        dot(&self.normals[s..s + f], &block[r * f..(r + 1) * f])
                    });
                } else {
                    let f = self.features;
                    self.walk(tree, root, &mut at[..n], |node, r| {
                        block[r * f + node.feature as usize]
                    });
                }
                let path = &self.path[root as usize..end];
                for (t, &pos) in total[..n].iter_mut().zip(&at[..n]) {
                    *t += path[pos as usize];
                }
            }
        }
    }

    /// Adds the complete layout when the variant and height allow it.
    fn with_complete_layout(mut self) -> Forest {
        if self.extended
            || self.height_limit > COMPLETE_MAX_HEIGHT
            || (self.roots.len() << self.height_limit) > COMPLETE_MAX_BOTTOM
        {
            return self;
        }
        let inner = (1usize << self.height_limit) - 1;
        let trees = self.roots.len();
        let mut complete = Complete {
            inner,
            height: self.height_limit,
            width: self.features,
            thresholds: vec![f64::INFINITY; inner * trees],
            features: vec![0; inner * trees],
            bottom: Vec::with_capacity((inner + 1) * trees),
        };
        for (t, &root) in self.roots.iter().enumerate() {
            let start = t * inner;
            let base = t * (inner + 1);
            complete.bottom.resize(base + inner + 1, 0.0);
            self.lay_out(&mut complete, start, base, root as usize, 0);
        }
        // Training and decoding guarantee it; the vector walk relies on it.
        if complete
            .features
            .iter()
            .any(|&f| !(0..self.features as i64).contains(&f))
        {
            return self;
        }
        self.complete = Some(complete);
        self
    }

    /// Copies the subtree of flat node `node` to complete position `pos` of the tree whose
    /// splits start at `start` and bottom positions at `base`.
    fn lay_out(&self, c: &mut Complete, start: usize, base: usize, node: usize, pos: usize) {
        let n = &self.nodes[node];
        if n.left as usize == node {
            // A leaf: every bottom position under `pos` holds its path length (the splits above
            // them keep their default, +inf: everything goes left).
            let depth = (usize::BITS - (pos + 1).leading_zeros() - 1) as usize;
            let span = 1usize << (self.height_limit - depth);
            let first = ((pos + 1) << (self.height_limit - depth)) - 1 - c.inner;
            c.bottom[base + first..base + first + span].fill(self.path[node]);
            return;
        }
        c.thresholds[start + pos] = n.threshold;
        c.features[start + pos] = i64::from(n.feature);
        self.lay_out(c, start, base, n.left as usize, 2 * pos + 1);
        self.lay_out(c, start, base, n.left as usize + 1, 2 * pos + 2);
    }

    /// Walks rows down one tree for `height_limit` steps (a leaf keeps a walk in place);
    /// `side_value(node, row)` is what a node compares with its threshold.
    #[inline(always)]
    fn walk(
        &self,
        tree: &[Node],
        root: u32,
        at: &mut [u32],
        side_value: impl Fn(&Node, usize) -> f64,
    ) {
        for _ in 0..self.height_limit {
            for (r, pos) in at.iter_mut().enumerate() {
                let node = &tree[*pos as usize];
                *pos = node.left - root + u32::from(side_value(node, r) >= node.threshold);
            }
        }
    }

    /// How much each feature did to isolate `x`, summing to 1 (all zero if no split was
    /// needed). In every tree, each split on the path of `x` earns its feature the bits of
    /// isolation it brought, `log2((n + 1) / (k + 1))` for `n` training rows at the node and `k`
    /// on the side `x` takes, divided by the tree's path length for `x`: a split that cuts `x`
    /// away from most rows, in a short path, weighs most (after DIFFI, Carletti et al. 2023).
    /// A hyperplane shares its credit among the features by how far each moves `x` along its
    /// normal from the training mean, `|n_f (x_f - mean_f)|`.
    pub fn contributions(&self, x: &[f64]) -> Result<Vec<f64>, ForestError> {
        Ok(self.assess(x, 0.5)?.contributions)
    }

    /// The score of `x`, how many trees agree with the verdict at `threshold`, and each
    /// feature's contribution (see [`Forest::contributions`]), in one walk of every tree.
    ///
    /// Agreement: a tree votes "anomalous" when its own path length for `x` is at most the one
    /// the forest's score would need to reach the threshold (`-log2(threshold) c(psi)`); the
    /// agreement is the share of trees voting as the forest decides. 1 means every tree sees it
    /// alike, 0.5 is a coin toss.
    pub fn assess(&self, x: &[f64], threshold: f64) -> Result<Assessment, ForestError> {
        self.check_rows(x, 1)?;
        let mut credit = vec![0.0; self.features];
        let mut weights = vec![0.0; self.features];
        let mut paths = Vec::with_capacity(self.roots.len());
        // (split, the child x went to) along one tree's path.
        let mut steps: Vec<(usize, usize)> = Vec::new();
        for &root in &self.roots {
            let mut at = root as usize;
            steps.clear();
            while self.nodes[at].left as usize != at {
                let next = self.side_of(&self.nodes[at], x) as usize;
                steps.push((at, next));
                at = next;
            }
            let h = self.path[at];
            paths.push(h);
            if h <= 0.0 {
                continue;
            }
            for &(s, next) in &steps {
                let node = &self.nodes[s];
                let bits = ((f64::from(self.sizes[s]) + 1.0) / (f64::from(self.sizes[next]) + 1.0))
                    .log2()
                    / h;
                if self.extended {
                    let start = node.feature as usize;
                    let normal = &self.normals[start..start + self.features];
                    for (((w, n), m), v) in weights.iter_mut().zip(normal).zip(&self.center).zip(x)
                    {
                        *w = (n * (v - m)).abs();
                    }
                    let sum: f64 = weights.iter().sum();
                    if sum > 0.0 {
                        for w in &mut weights {
                            *w /= sum;
                        }
                        for (c, w) in credit.iter_mut().zip(&weights) {
                            *c += w * bits;
                        }
                    }
                } else {
                    credit[node.feature as usize] += bits;
                }
            }
        }
        // The same leaves as score_rows reaches, summed in the same order: the same score.
        let score = self.score_of(paths.iter().fold(0.0, |t, h| t + h));
        let needed = -threshold.log2() * c(self.sample_size);
        let anomalous = score >= threshold;
        let agreeing = paths
            .iter()
            .filter(|&&h| (h <= needed) == anomalous)
            .count();
        let total: f64 = credit.iter().sum();
        if total > 0.0 {
            for c in &mut credit {
                *c /= total;
            }
        }
        Ok(Assessment {
            score,
            agreement: agreeing as f64 / self.roots.len() as f64,
            contributions: credit,
        })
    }
}

/// What [`Forest::assess`] finds about one row.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub score: f64,
    /// The share of trees that agree with the verdict at the threshold, in [0, 1].
    pub agreement: f64,
    /// Each feature's share in isolating the row, summing to 1 (or all 0).
    pub contributions: Vec<f64>,
}

impl Forest {
    /// The score of a row whose path lengths over all trees sum to `total`.
    fn score_of(&self, total: f64) -> f64 {
        let norm = c(self.sample_size) * self.roots.len() as f64;
        if norm > 0.0 {
            (-total / norm).exp2()
        } else {
            0.5
        }
    }

    /// The child of `node` that `x` goes to.
    fn side_of(&self, node: &Node, x: &[f64]) -> u32 {
        let v = if self.extended {
            let s = node.feature as usize;
            dot(&self.normals[s..s + self.features], x)
        } else {
            x[node.feature as usize]
        };
        node.left + u32::from(v >= node.threshold)
    }
}

/// Steps of every walk: `ceil(log2 psi)`.
fn height_limit(psi: usize) -> usize {
    (usize::BITS - (psi.max(1) - 1).leading_zeros()) as usize
}

/// The binary encoding of a forest (`custos.models.model`), little-endian:
///
/// ```text
/// "CIF1"  u8 flags (1 = extended)  u32 features  u32 sample_size  u32 trees  u32 nodes
/// u32 root × trees
/// node × nodes: u32 feature, then u32 left + f64 threshold (inner) or, when feature is
///               u32::MAX, u32 rows held (leaf)
/// extended only: f64 mean × features, f64 scale × features, u32 normal values, f64 × that many
/// ```
///
/// About 12 bytes a node: 100 trees of psi = 256 take some 350 kB. Decoding checks everything
/// a walk relies on (children inside their tree, after their parent, reached once, no deeper than
/// the height limit), so a damaged or hand-made value is refused, never followed out of bounds.
const MAGIC: &[u8; 4] = b"CIF1";
const LEAF_TAG: u32 = u32::MAX;

impl Forest {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + 4 * self.roots.len() + 16 * self.nodes.len());
        out.extend_from_slice(MAGIC);
        out.push(u8::from(self.extended));
        for v in [
            self.features,
            self.sample_size,
            self.roots.len(),
            self.nodes.len(),
        ] {
            out.extend_from_slice(&(v as u32).to_le_bytes());
        }
        for r in &self.roots {
            out.extend_from_slice(&r.to_le_bytes());
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.left as usize == i {
                out.extend_from_slice(&LEAF_TAG.to_le_bytes());
                out.extend_from_slice(&self.sizes[i].to_le_bytes());
            } else {
                out.extend_from_slice(&n.feature.to_le_bytes());
                out.extend_from_slice(&n.left.to_le_bytes());
                out.extend_from_slice(&n.threshold.to_le_bytes());
            }
        }
        if self.extended {
            for v in self.center.iter().chain(&self.scale) {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&(self.normals.len() as u32).to_le_bytes());
            for v in &self.normals {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Forest, ForestError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(ForestError::Corrupt("unknown format"));
        }
        let extended = match r.take(1)?[0] {
            0 => false,
            1 => true,
            _ => return Err(ForestError::Corrupt("unknown flags")),
        };
        let features = r.u32()? as usize;
        let sample_size = r.u32()? as usize;
        let trees = r.u32()? as usize;
        let count = r.u32()? as usize;
        if !(1..=MAX_FEATURES).contains(&features)
            || !(2..=MAX_SAMPLE_SIZE).contains(&sample_size)
            || !(1..=MAX_TREES).contains(&trees)
        {
            return Err(ForestError::Corrupt("parameters out of range"));
        }
        let height_limit = height_limit(sample_size);
        let per_tree = 2 * sample_size.min(1 << height_limit) - 1;
        if count < trees || count > trees * per_tree || count * 8 > bytes.len() {
            return Err(ForestError::Corrupt("node count out of range"));
        }
        let roots = (0..trees).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
        if roots[0] != 0 || roots.windows(2).any(|w| w[0] >= w[1]) {
            return Err(ForestError::Corrupt("trees out of order"));
        }
        if *roots.last().unwrap_or(&0) as usize >= count {
            return Err(ForestError::Corrupt("a tree starts past the last node"));
        }
        let mut nodes = Vec::with_capacity(count);
        let mut sizes = Vec::with_capacity(count);
        for i in 0..count {
            let feature = r.u32()?;
            if feature == LEAF_TAG {
                let size = r.u32()?;
                if size as usize > sample_size {
                    return Err(ForestError::Corrupt(
                        "a leaf holds more rows than the sample",
                    ));
                }
                nodes.push(Node {
                    feature: 0,
                    left: i as u32,
                    threshold: f64::INFINITY,
                });
                sizes.push(size);
            } else {
                let left = r.u32()?;
                let threshold = f64::from_le_bytes(r.array()?);
                if !threshold.is_finite() {
                    return Err(ForestError::Corrupt("a threshold is not finite"));
                }
                nodes.push(Node {
                    feature,
                    left,
                    threshold,
                });
                sizes.push(0);
            }
        }
        let (center, scale, normals) = if extended {
            let center = (0..features)
                .map(|_| r.array().map(f64::from_le_bytes))
                .collect::<Result<Vec<_>, _>>()?;
            let scale = (0..features)
                .map(|_| r.array().map(f64::from_le_bytes))
                .collect::<Result<Vec<_>, _>>()?;
            let len = r.u32()? as usize;
            if !len.is_multiple_of(features)
                || len > count * features + features
                || len * 8 > bytes.len()
            {
                return Err(ForestError::Corrupt("normals out of range"));
            }
            let normals = (0..len)
                .map(|_| r.array().map(f64::from_le_bytes))
                .collect::<Result<Vec<_>, _>>()?;
            if scale.iter().any(|s| !s.is_finite() || *s <= 0.0)
                || center.iter().any(|m| !m.is_finite())
                || normals.iter().any(|v| !v.is_finite())
                || normals[..features.min(len)].iter().any(|v| *v != 0.0)
                || len < features
            {
                return Err(ForestError::Corrupt("a normal or scale is not usable"));
            }
            (center, scale, normals)
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        if r.at != bytes.len() {
            return Err(ForestError::Corrupt("trailing bytes"));
        }
        let path = tree_paths(
            &nodes,
            &mut sizes,
            sample_size,
            &roots,
            features,
            normals.len(),
            extended,
            height_limit,
        )?;
        Ok(Forest {
            features,
            sample_size,
            extended,
            height_limit,
            roots,
            nodes,
            path,
            sizes,
            normals,
            center,
            scale,
            complete: None,
        }
        .with_complete_layout())
    }
}

/// Checks the shape of every tree, counts the rows through its inner nodes (`sizes` holds the
/// leaves' on entry) and returns each leaf's path length (depth + c(size)).
#[allow(clippy::too_many_arguments)]
fn tree_paths(
    nodes: &[Node],
    sizes: &mut [u32],
    sample_size: usize,
    roots: &[u32],
    features: usize,
    normals: usize,
    extended: bool,
    height_limit: usize,
) -> Result<Vec<f64>, ForestError> {
    const UNREACHED: usize = usize::MAX;
    let mut depth = vec![UNREACHED; nodes.len()];
    let mut path = vec![0.0; nodes.len()];
    for (t, &root) in roots.iter().enumerate() {
        let start = root as usize;
        let end = roots.get(t + 1).map_or(nodes.len(), |&r| r as usize);
        depth[start] = 0;
        // Children come after their parent, so one pass in order sees each parent first.
        for i in start..end {
            let d = depth[i];
            if d == UNREACHED {
                return Err(ForestError::Corrupt("a node no parent points to"));
            }
            let n = &nodes[i];
            if n.left as usize == i {
                path[i] = d as f64 + c(sizes[i] as usize);
                continue;
            }
            let left = n.left as usize;
            let feature_ok = if extended {
                let f = n.feature as usize;
                f >= features && f.is_multiple_of(features) && f + features <= normals
            } else {
                (n.feature as usize) < features
            };
            if !feature_ok {
                return Err(ForestError::Corrupt("a split on a feature the model lacks"));
            }
            if left <= i || left + 1 >= end || d + 1 > height_limit {
                return Err(ForestError::Corrupt("a child outside its tree"));
            }
            for child in [left, left + 1] {
                if depth[child] != UNREACHED {
                    return Err(ForestError::Corrupt("a node with two parents"));
                }
                depth[child] = d + 1;
            }
        }
        // Rows through each inner node: its children's, counted from the leaves up.
        for i in (start..end).rev() {
            let left = nodes[i].left as usize;
            if left != i {
                sizes[i] = sizes[left].saturating_add(sizes[left + 1]);
            }
        }
        if sizes[start] as usize != sample_size {
            return Err(ForestError::Corrupt("a tree not grown on the sample"));
        }
    }
    Ok(path)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ForestError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(ForestError::Corrupt("cut short"))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ForestError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32, ForestError> {
        self.array().map(u32::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(seed: u64) -> Params {
        Params {
            trees: 100,
            sample_size: 64,
            seed,
            extended: false,
        }
    }

    /// A forest of `params(seed)` on two-column `data`, of either variant.
    fn variant(data: &[f64], extended: bool, seed: u64) -> Forest {
        Forest::train(
            data,
            2,
            Params {
                extended,
                ..params(seed)
            },
        )
        .unwrap()
    }

    /// 200 points on a small grid around the origin, and one far away.
    fn cluster_and_outlier() -> Vec<f64> {
        let mut data = Vec::new();
        for i in 0..200 {
            data.push((i % 20) as f64 * 0.1);
            data.push((i / 20) as f64 * 0.1);
        }
        data.extend([25.0, -30.0]);
        data
    }

    /// The paper's definition, walked node by node: the reference the branch-free walk must match.
    fn reference_score(f: &Forest, x: &[f64]) -> f64 {
        let mut total = 0.0;
        for &root in &f.roots {
            let (mut at, mut depth) = (root as usize, 0usize);
            while f.nodes[at].left as usize != at {
                let n = &f.nodes[at];
                let v = if f.extended {
                    let s = n.feature as usize;
                    dot(&f.normals[s..s + f.features], x)
                } else {
                    x[n.feature as usize]
                };
                at = if v < n.threshold { n.left } else { n.left + 1 } as usize;
                depth += 1;
            }
            total += depth as f64 + c(f.sizes[at] as usize);
        }
        2f64.powf(-(total / f.roots.len() as f64) / c(f.sample_size))
    }

    #[test]
    fn c_matches_the_paper_and_scikit_learn() {
        assert_eq!(c(0), 0.0);
        assert_eq!(c(1), 0.0);
        assert_eq!(c(2), 1.0);
        // c(256) as scikit-learn's _average_path_length computes it.
        assert!(
            (c(256) - 10.244_770_920_119_917).abs() < 1e-12,
            "{}",
            c(256)
        );
        assert_eq!([2, 3, 4, 5, 256, 257].map(height_limit), [1, 2, 2, 3, 8, 9]);
    }

    #[test]
    fn the_outlier_scores_highest_and_scores_lie_in_zero_one() {
        let data = cluster_and_outlier();
        for extended in [false, true] {
            let f = variant(&data, extended, 7);
            let outlier = f.score(&[25.0, -30.0]).unwrap();
            let inlier = f.score(&[1.0, 0.5]).unwrap();
            assert!(outlier > 0.6, "extended {extended}: outlier {outlier}");
            assert!(inlier < 0.55, "extended {extended}: inlier {inlier}");
            let mut all = vec![0.0; data.len() / 2];
            f.score_rows(&data, &mut all).unwrap();
            for (row, s) in data.chunks(2).zip(&all) {
                assert!(*s > 0.0 && *s < 1.0);
                assert!((s - reference_score(&f, row)).abs() < 1e-12);
                assert_eq!(*s, f.score(row).unwrap());
            }
        }
    }

    #[test]
    fn a_seed_gives_the_same_forest_and_scores() {
        let data = cluster_and_outlier();
        let a = Forest::train(&data, 2, params(42)).unwrap();
        let b = Forest::train(&data, 2, params(42)).unwrap();
        let c = Forest::train(&data, 2, params(43)).unwrap();
        assert!(a == b);
        assert!(a != c);
        assert_eq!(a.score(&[0.3, 0.4]), b.score(&[0.3, 0.4]));
    }

    #[test]
    fn constant_data_isolates_nothing() {
        let data = vec![1.0; 2 * 100];
        for extended in [false, true] {
            let f = variant(&data, extended, 1);
            // Every row reaches the root leaf: E(h) = c(psi), s = 0.5.
            assert!((f.score(&[1.0, 1.0]).unwrap() - 0.5).abs() < 1e-12);
            assert_eq!(f.contributions(&[1.0, 1.0]).unwrap(), vec![0.0, 0.0]);
        }
    }

    #[test]
    fn the_feature_that_isolates_an_outlier_explains_it() {
        // Feature 0 is ordinary for the outlier, feature 1 is far off.
        let mut data: Vec<f64> = (0..300)
            .flat_map(|i| [(i % 17) as f64, (i % 13) as f64])
            .collect();
        data.extend([8.0, 400.0]);
        for extended in [false, true] {
            let f = variant(&data, extended, 3);
            let w = f.contributions(&[8.0, 400.0]).unwrap();
            assert!(w[1] > 0.6, "extended {extended}: {w:?}");
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }

    #[test]
    fn most_trees_agree_with_the_verdict_on_clear_cases() {
        let data = cluster_and_outlier();
        let f = Forest::train(&data, 2, params(11)).unwrap();
        let outlier = f.assess(&[25.0, -30.0], 0.6).unwrap();
        assert!(
            outlier.score >= 0.6 && outlier.agreement > 0.6,
            "{outlier:?}"
        );
        let inlier = f.assess(&[1.0, 0.5], 0.6).unwrap();
        assert!(inlier.score < 0.6 && inlier.agreement > 0.5, "{inlier:?}");
        assert_eq!(inlier.score, f.score(&[1.0, 0.5]).unwrap());
    }

    #[test]
    fn the_vector_and_scalar_walks_give_the_same_scores() {
        let mut data = Vec::new();
        for i in 0..2000u32 {
            for f in 0..5u32 {
                data.push(f64::from((i * 7919 + f * 104_729) % 1000) / 37.0);
            }
        }
        let f = Forest::train(
            &data,
            5,
            Params {
                trees: 30,
                sample_size: 256,
                seed: 4,
                extended: false,
            },
        )
        .unwrap();
        let mut vector = vec![0.0; 2000];
        let mut scalar = vec![0.0; 2000];
        f.score_rows(&data, &mut vector).unwrap();
        super::super::simd::FORCE_SCALAR.with(|s| s.set(true));
        f.score_rows(&data, &mut scalar).unwrap();
        super::super::simd::FORCE_SCALAR.with(|s| s.set(false));
        assert_eq!(vector, scalar);
        for (row, s) in data.chunks(5).zip(&scalar).step_by(97) {
            assert!((s - reference_score(&f, row)).abs() < 1e-12);
        }
    }

    #[test]
    fn the_encoding_round_trips_and_scores_alike() {
        let data = cluster_and_outlier();
        for extended in [false, true] {
            let f = variant(&data, extended, 5);
            let bytes = f.to_bytes();
            let g = Forest::from_bytes(&bytes).unwrap();
            assert_eq!(f.roots, g.roots);
            assert_eq!(f.nodes, g.nodes);
            assert_eq!(f.sizes, g.sizes);
            assert_eq!(f.normals, g.normals);
            for row in data.chunks(2) {
                assert_eq!(f.score(row), g.score(row));
            }
            assert_eq!(g.to_bytes(), bytes);
        }
    }

    #[test]
    fn a_damaged_encoding_is_refused() {
        let data = cluster_and_outlier();
        let bytes = Forest::train(&data, 2, params(5)).unwrap().to_bytes();
        for cut in [0, 3, 4, 20, bytes.len() / 2, bytes.len() - 1] {
            assert!(Forest::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Forest::from_bytes(&longer),
            Err(ForestError::Corrupt("trailing bytes"))
        );
        // The root's left child pointed back at the root: a loop.
        let mut looped = bytes.clone();
        let root_left = 4 + 1 + 16 + 4 * 100 + 4;
        looped[root_left..root_left + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(Forest::from_bytes(&looped).is_err());
    }

    #[test]
    fn bad_input_is_refused() {
        let data = cluster_and_outlier();
        assert_eq!(Forest::train(&[], 2, params(1)), Err(ForestError::Empty));
        assert_eq!(
            Forest::train(&data, 0, params(1)),
            Err(ForestError::NoFeatures)
        );
        assert!(matches!(
            Forest::train(&data[..5], 2, params(1)),
            Err(ForestError::Ragged { .. })
        ));
        assert!(matches!(
            Forest::train(
                &[1.0, f64::NAN, 2.0, 3.0],
                2,
                Params {
                    sample_size: 2,
                    ..params(1)
                }
            ),
            Err(ForestError::NotFinite {
                row: 0,
                feature: 1,
                ..
            })
        ));
        assert_eq!(
            Forest::train(
                &data,
                2,
                Params {
                    sample_size: 500,
                    ..params(1)
                }
            ),
            Err(ForestError::SampleTooLarge {
                psi: 500,
                rows: 201
            })
        );
        assert!(matches!(
            Forest::train(
                &data,
                2,
                Params {
                    trees: 0,
                    ..params(1)
                }
            ),
            Err(ForestError::TooSmall {
                what: "n_trees",
                ..
            })
        ));
        assert!(matches!(
            Forest::train(
                &data,
                2,
                Params {
                    trees: MAX_TREES + 1,
                    ..params(1)
                }
            ),
            Err(ForestError::TooLarge {
                what: "n_trees",
                ..
            })
        ));
        let f = Forest::train(&data, 2, params(1)).unwrap();
        assert_eq!(
            f.score(&[1.0]),
            Err(ForestError::FeatureCount {
                expected: 2,
                got: 1
            })
        );
        assert!(matches!(
            f.score(&[1.0, f64::INFINITY]),
            Err(ForestError::NotFinite { .. })
        ));
    }

    #[test]
    fn duplicate_rows_and_extreme_values_still_give_a_forest_that_decodes() {
        // Integer features with many ties: the extended variant's planes often cut nothing.
        let data: Vec<f64> = (0..400)
            .flat_map(|i| [f64::from(i % 3), f64::from(i % 2)])
            .collect();
        let extreme = [-1e308, 1e308, 0.0, -1e308, 1e308, 5.0, 1.0, 1.0];
        for (rows, width) in [(&data[..], 2), (&extreme[..], 2)] {
            for extended in [false, true] {
                let f = Forest::train(
                    rows,
                    width,
                    Params {
                        trees: 20,
                        sample_size: 4,
                        seed: 3,
                        extended,
                    },
                )
                .unwrap();
                let back = Forest::from_bytes(&f.to_bytes()).unwrap();
                assert!(back.score(&rows[..width]).unwrap().is_finite());
            }
        }
        let many = vec![1.5; 2 * 2000];
        assert!(matches!(
            Forest::train(
                &many,
                2,
                Params {
                    trees: 10_000,
                    sample_size: 2000,
                    seed: 1,
                    extended: false
                }
            ),
            Err(ForestError::TooLarge { .. })
        ));
    }

    #[test]
    fn feature_stats_are_the_population_moments() {
        let s = feature_stats(&[1.0, 10.0, 3.0, 10.0], 2).unwrap();
        assert_eq!(
            (s[0].mean, s[0].std_dev, s[0].min, s[0].max),
            (2.0, 1.0, 1.0, 3.0)
        );
        assert_eq!((s[1].mean, s[1].std_dev), (10.0, 0.0));
    }

    proptest::proptest! {
        /// Whatever bytes arrive as a model, decoding returns an error or a forest that scores
        /// without panicking.
        #[test]
        fn any_damage_to_an_encoding_is_caught_or_harmless(
            flips in proptest::collection::vec((0usize..4000, proptest::prelude::any::<u8>()), 1..6),
            extended in proptest::prelude::any::<bool>(),
        ) {
            let data = cluster_and_outlier();
            let f = Forest::train(&data, 2, Params { trees: 5, sample_size: 16, seed: 9, extended }).unwrap();
            let mut bytes = f.to_bytes();
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] ^= v;
            }
            if let Ok(g) = Forest::from_bytes(&bytes) {
                let _ = g.score(&[0.5, 0.5]);
                let _ = g.contributions(&[0.5, 0.5]);
            }
        }
    }
}
