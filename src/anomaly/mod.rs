//! Anomaly detection: an Isolation Forest (custos_core::anomaly::forest) trained on any query's
//! numeric columns and scored in the backend (`custos.if_train`, `if_score`, `if_score_query`),
//! versioned per tenant in custos.models (models.rs); the audit-event features, detection,
//! feedback and bias checks are SQL over these (sql/anomaly.sql).

pub mod events;
pub mod models;
mod pipeline;

use crate::error::raise;
use crate::pg::backend::strong_random;
use crate::pg::query::NumericRows;
use crate::pg::srf::Int8Float8Rows;
use custos_core::anomaly::forest::{feature_stats, Forest, ForestError, Params};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode::*;
use serde_json::json;

/// Rows read from a query at a time: big enough that SPI's per-fetch cost vanishes, small
/// enough that a batch's tuples stay in cache.
const BATCH: usize = 4096;
/// Training rows scored for the model's metrics (score quantiles), evenly spaced.
const METRIC_ROWS: usize = 10_000;

fn required<T>(value: Option<T>, what: &str) -> T {
    value.unwrap_or_else(|| {
        raise(
            ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{what} cannot be NULL"),
            None,
        )
    })
}

/// Raises the error a forest reported, with the SQLSTATE of its kind.
fn refuse(e: ForestError, what: &str) -> ! {
    let (code, hint) = match &e {
        ForestError::NotFinite { .. } => (
            ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            Some("only finite numbers can be features"),
        ),
        ForestError::FeatureCount { .. } => (
            ERRCODE_INVALID_PARAMETER_VALUE,
            Some(
                "pass one value per feature, in the order of the training query's numeric columns",
            ),
        ),
        ForestError::Corrupt(_) => (ERRCODE_DATA_CORRUPTED, None),
        ForestError::SampleTooLarge { rows, .. } if *rows >= 2 => (
            ERRCODE_INVALID_PARAMETER_VALUE,
            Some("pass a smaller sample_size (at most the number of rows), or train on more rows"),
        ),
        _ => (ERRCODE_INVALID_PARAMETER_VALUE, None),
    };
    raise(code, format!("{what}: {e}"), hint)
}

/// `custos.if_train`: trains an Isolation Forest on every numeric column of the query's result
/// (run with the caller's rights), stores it as a new version of model `name` for the current
/// tenant (no tenant: a shared model, superusers only) and activates it.
#[pg_extern(volatile, parallel_unsafe)]
fn if_train(
    name: Option<&str>,
    query: Option<&str>,
    n_trees: default!(Option<i32>, 100),
    sample_size: default!(Option<i32>, 256),
    seed: default!(Option<i64>, "NULL"),
    extended: default!(Option<bool>, false),
) -> i32 {
    let name = required(name, "name");
    if name == EVENT_MODEL {
        raise(
            ERRCODE_RESERVED_NAME,
            format!("model name \"{EVENT_MODEL}\" is reserved for the audit-event model"),
            Some("custos.train_anomaly_model trains it, on the features custos computes"),
        );
    }
    train(name, query, n_trees, sample_size, seed, extended)
}

/// The audit-event model's name: trained only through custos.train_anomaly_model.
const EVENT_MODEL: &str = "audit_events";

/// `custos_internal.train_event_model`: `if_train` for the reserved audit-event model, called
/// by custos.train_anomaly_model (SECURITY DEFINER) with custos' own feature query.
#[pg_extern(volatile, parallel_unsafe)]
fn train_event_model(query: &str, n_trees: i32, sample_size: i32, seed: Option<i64>) -> i32 {
    train(
        EVENT_MODEL,
        Some(query),
        Some(n_trees),
        Some(sample_size),
        seed,
        Some(false),
    )
}

fn train(
    name: &str,
    query: Option<&str>,
    n_trees: Option<i32>,
    sample_size: Option<i32>,
    seed: Option<i64>,
    extended: Option<bool>,
) -> i32 {
    const WHAT: &str = "custos.if_train";
    let query = required(query, "query");
    if name.is_empty() || name.len() > 200 {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            "a model name has 1 to 200 characters",
            None,
        );
    }
    let trees = required(n_trees, "n_trees");
    let psi = required(sample_size, "sample_size");
    let extended = required(extended, "extended");
    // Refused before the query runs: a bad parameter costs nothing.
    let bounds = [
        ("n_trees", trees, 1, custos_core::anomaly::forest::MAX_TREES),
        (
            "sample_size",
            psi,
            2,
            custos_core::anomaly::forest::MAX_SAMPLE_SIZE,
        ),
    ];
    for (what, value, least, most) in bounds {
        if i64::from(value) < least as i64 || value as i64 > most as i64 {
            raise(
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("{WHAT}: {what} must be between {least} and {most}, not {value}"),
                None,
            );
        }
    }
    let tenant = crate::tenancy::tenant_or_superuser(
        "models belong to the tenant that trains them: call custos.set_tenant(uuid) first, or send a JWT with a tenant_id claim; only superusers train shared models",
    );
    let seed = seed.map_or_else(random_seed, |s| s as u64);

    let started = std::time::Instant::now();
    let mut rows = NumericRows::open(query, WHAT);
    let features = rows.features();
    let mut data = Vec::new();
    while rows.next_batch(BATCH, &mut data) > 0 {}
    let names = std::mem::take(&mut rows.names);
    let count = rows.rows_read as usize;
    rows.close();
    let read_ms = started.elapsed().as_secs_f64() * 1e3;
    if count == 0 {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{WHAT}: the query returned no rows to train on"),
            None,
        );
    }
    let params = Params {
        trees: trees as usize,
        sample_size: psi as usize,
        seed,
        extended,
    };
    let trained = std::time::Instant::now();
    let forest = Forest::train_checking(&data, features, params, || {
        pg_sys::check_for_interrupts!();
    })
    .unwrap_or_else(|e| refuse(e, WHAT));
    let train_ms = trained.elapsed().as_secs_f64() * 1e3;
    let stats = feature_stats(&data, features).unwrap_or_else(|e| refuse(e, WHAT));
    let normalisation: Vec<_> = names
        .iter()
        .zip(&stats)
        .map(|(n, s)| json!({"feature": n, "mean": s.mean, "std_dev": s.std_dev, "min": s.min, "max": s.max}))
        .collect();
    let metrics = training_metrics(&forest, &data, count, read_ms, train_ms);
    models::store(models::NewModel {
        name,
        tenant,
        forest: &forest,
        parameters: json!({"n_trees": trees, "sample_size": psi, "seed": seed as i64, "extended": extended}),
        feature_names: &names,
        normalisation: serde_json::Value::Array(normalisation),
        training_rows: count as i64,
        metrics,
    })
}

fn random_seed() -> u64 {
    let mut bytes = [0u8; 8];
    if !strong_random(&mut bytes) {
        raise(ERRCODE_INTERNAL_ERROR, "could not draw a random seed", None);
    }
    // A seed that fits a bigint, so that the stored parameters reproduce the model.
    u64::from_le_bytes(bytes) >> 1
}

/// Score quantiles over (up to METRIC_ROWS evenly spaced) training rows: where a threshold
/// falls in this model's scores.
fn training_metrics(
    forest: &Forest,
    data: &[f64],
    count: usize,
    read_ms: f64,
    train_ms: f64,
) -> serde_json::Value {
    let f = forest.features();
    let step = count.div_ceil(METRIC_ROWS).max(1);
    let sample: Vec<f64> = data
        .chunks_exact(f)
        .step_by(step)
        .flatten()
        .copied()
        .collect();
    let mut scores = vec![0.0; sample.len() / f];
    if forest.score_rows(&sample, &mut scores).is_err() {
        return json!({});
    }
    scores.sort_by(f64::total_cmp);
    let q = |p: f64| scores[((scores.len() - 1) as f64 * p).round() as usize];
    json!({
        "score_p50": q(0.5), "score_p90": q(0.9), "score_p99": q(0.99), "score_max": q(1.0),
        "scored_rows": scores.len(), "read_ms": read_ms, "train_ms": train_ms,
    })
}

/// Reads `features` as one row for the model, refusing NULLs.
fn feature_row(features: pgrx::Array<f64>) -> Vec<f64> {
    features
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.unwrap_or_else(|| {
                raise(
                    ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    format!("feature {} is NULL", i + 1),
                    Some("every feature needs a value"),
                )
            })
        })
        .collect()
}

/// `custos.if_score`: the anomaly score of one row in (0, 1), higher is more anomalous.
// PARALLEL RESTRICTED: a parallel worker may not see the request's JWT tenant as the leader does.
#[pg_extern(stable, parallel_restricted)]
fn if_score(name: Option<&str>, features: Option<pgrx::Array<f64>>) -> f64 {
    let name = required(name, "name");
    let row = feature_row(required(features, "features"));
    let model = models::active(name);
    model
        .forest
        .score(&row)
        .unwrap_or_else(|e| refuse(e, &format!("model \"{name}\"")))
}

/// The `top` features with the largest shares, as `[{feature, value, share}]`.
fn explanation(
    model: &models::Model,
    row: &[f64],
    shares: &[f64],
    top: Option<i32>,
) -> pgrx::JsonB {
    let mut order: Vec<usize> = (0..shares.len()).collect();
    order.sort_by(|&a, &b| shares[b].total_cmp(&shares[a]));
    let top = top.unwrap_or(3).clamp(1, shares.len().max(1) as i32) as usize;
    pgrx::JsonB(serde_json::Value::Array(
        order
            .into_iter()
            .take(top)
            .map(|i| json!({"feature": model.feature_names[i], "value": row[i], "share": (shares[i] * 1000.0).round() / 1000.0}))
            .collect(),
    ))
}

/// `custos.if_explain`: each feature's share in isolating the row, largest first, with the
/// row's value: why a row scored high.
#[pg_extern(stable, parallel_restricted)]
fn if_explain(
    name: Option<&str>,
    features: Option<pgrx::Array<f64>>,
    top: default!(Option<i32>, 3),
) -> pgrx::JsonB {
    let name = required(name, "name");
    let row = feature_row(required(features, "features"));
    let model = models::active(name);
    let shares = model
        .forest
        .contributions(&row)
        .unwrap_or_else(|e| refuse(e, &format!("model \"{name}\"")));
    explanation(&model, &row, &shares, top)
}

/// `custos_internal.if_assess`: score, confidence (the share of trees agreeing with the
/// verdict at `threshold`) and explanation of one row, in one walk of the forest, under the
/// model `name` of `tenant` (else the shared one). Internal: custos' detection functions pass the
/// tenant they work for (an insert trigger may run in another tenant's session).
#[pg_extern(stable, parallel_restricted)]
fn if_assess(
    tenant: pgrx::Uuid,
    name: &str,
    features: pgrx::Array<f64>,
    threshold: f64,
    top: i32,
) -> TableIterator<
    'static,
    (
        name!(score, f64),
        name!(confidence, f64),
        name!(explanation, pgrx::JsonB),
    ),
> {
    let row = feature_row(features);
    let model = models::active_for(name, Some(uuid::Uuid::from_bytes(*tenant.as_bytes())));
    let a = model
        .forest
        .assess(&row, threshold)
        .unwrap_or_else(|e| refuse(e, &format!("model \"{name}\"")));
    let explained = explanation(&model, &row, &a.contributions, Some(top));
    TableIterator::once((a.score, a.agreement, explained))
}

/// Scores every row of `query` with model `name`, in the query's order.
fn score_query(name: &str, query: &str, mut emit: impl FnMut(i64, f64)) {
    const WHAT: &str = "custos.if_score_query";
    let model = models::active(name);
    let mut rows = NumericRows::open(query, WHAT);
    let f = model.forest.features();
    if rows.features() != f {
        raise(
            ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "{WHAT}: the query returns {} numeric columns ({}), model \"{name}\" version {} expects {f} ({})",
                rows.features(),
                rows.names.join(", "),
                model.version,
                model.feature_names.join(", ")
            ),
            Some("select the features in the order the model was trained on"),
        );
    }
    let workers = (crate::gucs::SCORING_THREADS.get().clamp(1, 16) - 1) as usize;
    let mut number = 0i64;
    pipeline::score_batches(
        &model.forest,
        workers,
        |data| rows.next_batch(BATCH, data),
        |scores| {
            for s in scores {
                number += 1;
                emit(number, *s);
            }
        },
    )
    .unwrap_or_else(|e| refuse(e, WHAT));
    rows.close();
}

crate::fmgr_v1_info!(pg_finfo_custos_if_score_query);

/// `custos.if_score_query(name text, query text) RETURNS TABLE (row_number bigint, score float8)`:
/// a C-level function so that its rows go to the executor's tuplestore in materialize mode.
///
/// # Safety
/// Called by PostgreSQL's function manager for the function declared in sql/anomaly.sql.
#[allow(unsafe_code)]
#[pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn custos_if_score_query(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: as promised above: two text arguments, a (bigint, float8) set result.
    unsafe {
        let name: Option<String> = pgrx::fcinfo::pg_getarg(fcinfo, 0);
        let query: Option<String> = pgrx::fcinfo::pg_getarg(fcinfo, 1);
        let name = required(name, "name");
        let query = required(query, "query");
        let mut out = Int8Float8Rows::materialize(fcinfo);
        score_query(&name, &query, |i, s| out.push(i, s));
        pg_sys::Datum::from(0)
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    include!("db_tests.rs");
}
