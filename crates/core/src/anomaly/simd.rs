//! The complete-layout walk with AVX-512 gathers: 64 rows a block, as 8 groups of 8 lanes, each
//! level of every tree a handful of vector instructions per group. Chosen at run time when the
//! CPU has AVX-512F; the scalar walk in forest.rs gives the same sums otherwise (a test holds
//! them to each other).
#![allow(unsafe_code)]

use super::forest::{Complete, BLOCK};

/// Adds each row's path length in every tree to `total` when the CPU can and the block is full;
/// false (nothing done) otherwise.
pub(super) fn walk_block(c: &Complete, width: usize, block: &[f64], total: &mut [f64]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let trees = c.thresholds.len() / c.inner.max(1);
        let shapes_hold = total.len() == BLOCK
            && block.len() == BLOCK * width
            && c.inner == (1 << c.height) - 1
            && c.features.len() == c.thresholds.len()
            && c.bottom.len() == trees * (c.inner + 1)
            && c.width == width;
        if shapes_hold
            && !FORCE_SCALAR.with(std::cell::Cell::get)
            && std::is_x86_feature_detected!("avx512f")
        {
            // SAFETY: AVX-512F is present; the shapes checked above keep every gather in bounds
            // (see walk_avx512).
            unsafe { walk_avx512(c, trees, width, block, total) };
            return true;
        }
    }
    let _ = (c, width, block, total);
    false
}

std::thread_local! {
    /// Tests set it to compare the scalar walk with this one.
    pub(super) static FORCE_SCALAR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// # Safety
/// AVX-512F is available; `block` holds BLOCK rows of `width` values, `total` BLOCK sums; `c` has
/// `trees` trees of `inner = 2^height - 1` splits whose features are all below `width`, and
/// `inner + 1` bottom values each. A walk's position after `l < height` levels is below `inner`
/// (`2^(l+1) - 2`), so split gathers stay in the tree, and after `height` levels in
/// `[inner, 2 inner]`, so bottom gathers do too; row gathers read `row * width + feature`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn walk_avx512(c: &Complete, trees: usize, width: usize, block: &[f64], total: &mut [f64]) {
    use std::arch::x86_64::*;
    const GROUPS: usize = BLOCK / 8;
    let w = width as i64;
    let lane_base = _mm512_set_epi64(7 * w, 6 * w, 5 * w, 4 * w, 3 * w, 2 * w, w, 0);
    let one = _mm512_set1_epi64(1);
    let inner = _mm512_set1_epi64(c.inner as i64);
    let mut acc = [_mm512_setzero_pd(); GROUPS];
    for t in 0..trees {
        // SAFETY (all below): offsets within the arrays, as the function's contract says.
        unsafe {
            let thresholds = c.thresholds.as_ptr().add(t * c.inner);
            let features = c.features.as_ptr().add(t * c.inner);
            let bottom = c.bottom.as_ptr().add(t * (c.inner + 1));
            let mut at = [_mm512_setzero_si512(); GROUPS];
            for _ in 0..c.height {
                for (g, pos) in at.iter_mut().enumerate() {
                    let rows = block.as_ptr().add(g * 8 * width);
                    let f = _mm512_i64gather_epi64::<8>(*pos, features);
                    let th = _mm512_i64gather_pd::<8>(*pos, thresholds);
                    let x = _mm512_i64gather_pd::<8>(_mm512_add_epi64(lane_base, f), rows);
                    let right = _mm512_cmp_pd_mask::<_CMP_GE_OQ>(x, th);
                    let left = _mm512_add_epi64(_mm512_add_epi64(*pos, *pos), one);
                    *pos = _mm512_mask_add_epi64(left, right, left, one);
                }
            }
            for (a, pos) in acc.iter_mut().zip(at) {
                let leaf = _mm512_i64gather_pd::<8>(_mm512_sub_epi64(pos, inner), bottom);
                *a = _mm512_add_pd(*a, leaf);
            }
        }
    }
    for (g, a) in acc.into_iter().enumerate() {
        let mut lanes = [0.0f64; 8];
        // SAFETY: lanes holds 8 doubles.
        unsafe { _mm512_storeu_pd(lanes.as_mut_ptr(), a) };
        for (t, v) in total[g * 8..g * 8 + 8].iter_mut().zip(lanes) {
            *t += v;
        }
    }
}
