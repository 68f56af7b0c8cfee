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
//!   point of the node's bounding box instead of one feature.
//!
//! Where custos differs from scikit-learn: the random source (a seeded ChaCha8, so a seed gives
//! the same forest on every platform), a row goes left when its value is strictly below the
//! threshold (scikit-learn: below or equal; ties have probability zero for continuous data), and
//! a node in which the drawn feature is constant draws another one instead of becoming a leaf
//! early. Values are f64 throughout (scikit-learn scores in f32).
//!
//! Trees are stored flat (one `Vec` of nodes per forest), so scoring walks arrays and allocates
//! nothing.

use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Why a forest cannot be trained or a row scored.
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
    #[error("the model expects {expected} features, not {got}")]
    FeatureCount { expected: usize, got: usize },
}

/// Training parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub trees: usize,
    pub sample_size: usize,
    pub seed: u64,
    pub extended: bool,
}

/// One node: an inner node splits, a leaf counts the rows it holds (`feature == LEAF`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    /// The split feature, or LEAF; for the extended variant, the start of the node's normal
    /// vector in `Forest::normals` (and `threshold` is the hyperplane's offset).
    feature: u32,
    threshold: f64,
    /// The children: for rows below the threshold, and for the others.
    left: u32,
    right: u32,
    /// Rows reaching a leaf, for the path-length correction.
    size: u32,
}

const LEAF: u32 = u32::MAX;

/// A trained forest.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    features: usize,
    sample_size: usize,
    extended: bool,
    /// Where each tree's root is in `nodes`.
    roots: Vec<u32>,
    nodes: Vec<Node>,
    /// Normal vectors of the extended variant's hyperplanes, `features` values each.
    normals: Vec<f64>,
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
fn rows_of(data: &[f64], features: usize) -> Result<usize, ForestError> {
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

struct Builder<'a> {
    data: &'a [f64],
    features: usize,
    extended: bool,
    height_limit: usize,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    normals: Vec<f64>,
    /// Scratch: the features not constant in the node being split.
    varying: Vec<(usize, f64, f64)>,
    /// Scratch: the projections of the node's rows on the hyperplane normal.
    projections: Vec<f64>,
}

impl Builder<'_> {
    fn value(&self, row: usize, feature: usize) -> f64 {
        self.data[row * self.features + feature]
    }

    /// Grows the subtree of `rows` (reordered in place) at `depth`; returns its node index.
    fn grow(&mut self, rows: &mut [usize], depth: usize) -> u32 {
        let at = self.nodes.len() as u32;
        self.nodes.push(Node {
            feature: LEAF,
            threshold: 0.0,
            left: 0,
            right: 0,
            size: rows.len() as u32,
        });
        if depth >= self.height_limit || rows.len() <= 1 {
            return at;
        }
        self.varying.clear();
        for f in 0..self.features {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            for &r in rows.iter() {
                let v = self.value(r, f);
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if lo < hi {
                self.varying.push((f, lo, hi));
            }
        }
        if self.varying.is_empty() {
            return at; // every row alike: nothing isolates them further
        }
        let (feature, threshold, split) = if self.extended {
            self.hyperplane_split(rows)
        } else {
            let (f, lo, hi) = self.varying[self.rng.random_range(0..self.varying.len())];
            let t = lo + self.rng.random::<f64>() * (hi - lo);
            // lo < t < hi almost surely; a draw of exactly lo would send nothing left.
            let t = if t <= lo { (lo + hi) / 2.0 } else { t };
            let split = partition(rows, |r| self.value(r, f) < t);
            (f as u32, t, split)
        };
        let (left_rows, right_rows) = rows.split_at_mut(split);
        let left = self.grow(left_rows, depth + 1);
        let right = self.grow(right_rows, depth + 1);
        self.nodes[at as usize] = Node {
            feature,
            threshold,
            left,
            right,
            size: 0,
        };
        at
    }

    /// A random hyperplane through a random point of the node's bounding box: returns the
    /// normal's start in `normals`, the offset `n · p`, and the split point of `rows`.
    fn hyperplane_split(&mut self, rows: &mut [usize]) -> (u32, f64, usize) {
        let start = self.normals.len();
        let mut offset = 0.0;
        for f in 0..self.features {
            let n = standard_normal(&mut self.rng);
            let (lo, hi) = self
                .varying
                .iter()
                .find(|v| v.0 == f)
                .map(|v| (v.1, v.2))
                .unwrap_or_else(|| {
                    let v = self.value(rows[0], f);
                    (v, v)
                });
            let p = lo + self.rng.random::<f64>() * (hi - lo);
            self.normals.push(n);
            offset += n * p;
        }
        let normal = &self.normals[start..start + self.features];
        self.projections.clear();
        for &r in rows.iter() {
            let x = &self.data[r * self.features..(r + 1) * self.features];
            self.projections.push(dot(normal, x));
        }
        let mut order: Vec<(f64, usize)> = self
            .projections
            .iter()
            .copied()
            .zip(rows.iter().copied())
            .collect();
        let split = partition_pairs(&mut order, |p| p < offset);
        for (slot, (_, r)) in rows.iter_mut().zip(order) {
            *slot = r;
        }
        (start as u32, offset, split)
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

fn partition_pairs(rows: &mut [(f64, usize)], below: impl Fn(f64) -> bool) -> usize {
    let mut split = 0;
    for i in 0..rows.len() {
        if below(rows[i].0) {
            rows.swap(i, split);
            split += 1;
        }
    }
    split
}

impl Forest {
    /// Trains a forest on `data`, row-major with `features` values per row.
    pub fn train(data: &[f64], features: usize, params: Params) -> Result<Forest, ForestError> {
        let rows = rows_of(data, features)?;
        if params.trees < 1 {
            return Err(ForestError::TooSmall {
                what: "n_trees",
                least: 1,
                got: params.trees,
            });
        }
        if params.sample_size < 2 {
            return Err(ForestError::TooSmall {
                what: "sample_size",
                least: 2,
                got: params.sample_size,
            });
        }
        if params.sample_size > rows {
            return Err(ForestError::SampleTooLarge {
                psi: params.sample_size,
                rows,
            });
        }
        let psi = params.sample_size;
        let mut b = Builder {
            data,
            features,
            extended: params.extended,
            height_limit: (psi as f64).log2().ceil() as usize,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            nodes: Vec::with_capacity(params.trees * 4 * psi),
            normals: Vec::new(),
            varying: Vec::with_capacity(features),
            projections: Vec::new(),
        };
        let mut roots = Vec::with_capacity(params.trees);
        for _ in 0..params.trees {
            let mut picked = sample(&mut b.rng, rows, psi).into_vec();
            roots.push(b.grow(&mut picked, 0));
        }
        Ok(Forest {
            features,
            sample_size: psi,
            extended: params.extended,
            roots,
            nodes: b.nodes,
            normals: b.normals,
        })
    }

    pub fn features(&self) -> usize {
        self.features
    }

    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// The path length of `x` in the tree rooted at `root`.
    fn path_length(&self, root: u32, x: &[f64]) -> f64 {
        let mut at = root as usize;
        let mut depth = 0.0;
        loop {
            let n = &self.nodes[at];
            if n.feature == LEAF {
                return depth + c(n.size as usize);
            }
            let below = if self.extended {
                let start = n.feature as usize;
                dot(&self.normals[start..start + self.features], x) < n.threshold
            } else {
                x[n.feature as usize] < n.threshold
            };
            at = if below { n.left } else { n.right } as usize;
            depth += 1.0;
        }
    }

    /// The anomaly score of one row, in (0, 1); higher is more anomalous.
    pub fn score(&self, x: &[f64]) -> Result<f64, ForestError> {
        if x.len() != self.features {
            return Err(ForestError::FeatureCount {
                expected: self.features,
                got: x.len(),
            });
        }
        if let Some(f) = x.iter().position(|v| !v.is_finite()) {
            return Err(ForestError::NotFinite {
                row: 0,
                feature: f,
                value: x[f],
            });
        }
        let total: f64 = self.roots.iter().map(|&r| self.path_length(r, x)).sum();
        let mean = total / self.roots.len() as f64;
        Ok(2f64.powf(-mean / c(self.sample_size)))
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
    }

    #[test]
    fn the_outlier_scores_highest_and_scores_lie_in_zero_one() {
        let data = cluster_and_outlier();
        for extended in [false, true] {
            let f = Forest::train(
                &data,
                2,
                Params {
                    extended,
                    ..params(7)
                },
            )
            .unwrap();
            let outlier = f.score(&[25.0, -30.0]).unwrap();
            let inlier = f.score(&[1.0, 0.5]).unwrap();
            assert!(outlier > 0.6, "extended {extended}: outlier {outlier}");
            assert!(inlier < 0.55, "extended {extended}: inlier {inlier}");
            for row in data.chunks(2) {
                let s = f.score(row).unwrap();
                assert!(s > 0.0 && s < 1.0);
            }
        }
    }

    #[test]
    fn a_seed_gives_the_same_forest_and_scores() {
        let data = cluster_and_outlier();
        let a = Forest::train(&data, 2, params(42)).unwrap();
        let b = Forest::train(&data, 2, params(42)).unwrap();
        let c = Forest::train(&data, 2, params(43)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.score(&[0.3, 0.4]), b.score(&[0.3, 0.4]));
    }

    #[test]
    fn constant_data_isolates_nothing() {
        let data = vec![1.0; 2 * 100];
        let f = Forest::train(&data, 2, params(1)).unwrap();
        // Every row reaches the root leaf: E(h) = c(psi), s = 0.5.
        assert!((f.score(&[1.0, 1.0]).unwrap() - 0.5).abs() < 1e-12);
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
}
