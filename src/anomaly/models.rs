//! Anomaly models in custos.models: stored as a new active version, loaded once per backend and
//! cached until another version is activated anywhere (the table's statement trigger invalidates
//! every session's cache; see pg::cache).

use crate::error::raise;
use crate::pg::backend::{as_superuser, outer_user, role_name};
use crate::pg::spi::column;
use crate::pg::{cache, locks};
use custos_core::anomaly::forest::Forest;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode::*};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// An active model as scoring uses it.
pub struct Model {
    pub name: String,
    pub version: i32,
    /// None for a shared model.
    pub tenant: Option<uuid::Uuid>,
    pub forest: Forest,
    pub feature_names: Vec<String>,
}

type Key = (Option<uuid::Uuid>, String);

thread_local! {
    /// The models loaded by this backend, under the model generation they were loaded in.
    static LOADED: RefCell<(u64, HashMap<Key, Rc<Model>>)> = RefCell::new((0, HashMap::new()));
}

/// The active model `name` of the current tenant, else the shared one; raises 42704 if neither
/// exists (for the caller: another tenant's model is never visible).
pub fn active(name: &str) -> Rc<Model> {
    // Fail closed: without a tenant only a superuser scores (with the shared models).
    let tenant = crate::tenancy::tenant_or_superuser(
        "call custos.set_tenant(uuid) first, or send a JWT with a tenant_id claim",
    );
    active_for(name, tenant)
}

/// The active model `name` of `tenant`, else the shared one (for custos' own functions, which
/// name the tenant they work for).
pub fn active_for(name: &str, tenant: Option<uuid::Uuid>) -> Rc<Model> {
    let generation = cache::model_generation();
    let key = (tenant, name.to_string());
    let hit = LOADED.with(|l| {
        let mut l = l.borrow_mut();
        if l.0 != generation {
            l.1.clear();
            l.0 = generation;
        }
        l.1.get(&key).cloned()
    });
    if let Some(model) = hit {
        return model;
    }
    let model = Rc::new(load(name, tenant));
    // Kept only if no version was activated while it loaded (it may be the old one).
    if cache::model_generation() == generation {
        LOADED.with(|l| l.borrow_mut().1.insert(key, model.clone()));
    }
    model
}

/// Reads the active version under a snapshot taken now (read-only: scoring works on a hot
/// standby), so that a version activated by a transaction that committed after this one's
/// snapshot is what gets cached. Explicitly the tenant's or the shared ones, as the row-level
/// security of custos.models says.
fn load(name: &str, tenant: Option<uuid::Uuid>) -> Model {
    // fresh_rows passes no NULLs: without a tenant the query has no tenant parameter.
    let mut args = vec![(
        pg_sys::TEXTOID,
        name.into_datum().unwrap_or(pg_sys::Datum::from(0)),
    )];
    let query = match tenant.map(uuid_arg).and_then(|t| t.into_datum()) {
        Some(t) => {
            args.push((pg_sys::UUIDOID, t));
            c"SELECT version, model, feature_names, tenant_id FROM custos.models
               WHERE name = $1 AND active AND (tenant_id = $2 OR tenant_id IS NULL)
               ORDER BY tenant_id NULLS LAST LIMIT 1"
        }
        None => {
            c"SELECT version, model, feature_names, tenant_id FROM custos.models
                   WHERE name = $1 AND active AND tenant_id IS NULL LIMIT 1"
        }
    };
    let row = crate::pg::spi::fresh_rows(query, &args, |r| {
        (
            column::<i32>(r, 0).unwrap_or_default(),
            column::<Vec<u8>>(r, 1).unwrap_or_default(),
            column::<Vec<String>>(r, 2).unwrap_or_default(),
            column::<pgrx::Uuid>(r, 3).map(|u| uuid::Uuid::from_bytes(*u.as_bytes())),
        )
    })
    .into_iter()
    .next();
    let Some((version, bytes, feature_names, owner)) = row else {
        raise(
            ERRCODE_UNDEFINED_OBJECT,
            format!("no anomaly model named \"{name}\""),
            Some(match tenant {
                Some(_) => "train it with custos.if_train(name, query); models of the current tenant and shared ones are visible",
                None => "no tenant is set, so only shared models are visible: set one (custos.set_tenant) or train a shared model as a superuser",
            }),
        )
    };
    let forest = Forest::from_bytes(&bytes).unwrap_or_else(|e| {
        raise(
            ERRCODE_DATA_CORRUPTED,
            format!("anomaly model \"{name}\" version {version} cannot be read: {e}"),
            Some("train a new version with custos.if_train, or activate an earlier one with custos.activate_model"),
        )
    });
    if forest.features() != feature_names.len() {
        raise(
            ERRCODE_DATA_CORRUPTED,
            format!(
                "anomaly model \"{name}\" version {version} has {} features but names {}",
                forest.features(),
                feature_names.len()
            ),
            None,
        );
    }
    Model {
        name: name.to_string(),
        version,
        tenant: owner,
        forest,
        feature_names,
    }
}

fn uuid_arg(u: uuid::Uuid) -> pgrx::Uuid {
    pgrx::Uuid::from_bytes(*u.as_bytes())
}

/// What a training run stores besides the forest.
pub struct NewModel<'a> {
    pub name: &'a str,
    pub tenant: Option<uuid::Uuid>,
    pub forest: &'a Forest,
    pub parameters: serde_json::Value,
    pub feature_names: &'a [String],
    pub normalisation: serde_json::Value,
    pub training_rows: i64,
    pub metrics: serde_json::Value,
}

/// Stores a new version of the model and makes it the active one; returns its version.
/// Written as the superuser (the caller holds no write privilege on custos.models), after the
/// caller's query has run with the caller's rights; the tenant is the caller's.
pub fn store(m: NewModel) -> i32 {
    let creator = role_name(outer_user()).unwrap_or_default();
    let kind = if m.forest.extended() {
        "extended_isolation_forest"
    } else {
        "isolation_forest"
    };
    let owner = m.tenant.map(uuid_arg);
    let bytes = m.forest.to_bytes();
    let mut metrics = m.metrics;
    if let Some(o) = metrics.as_object_mut() {
        o.insert("model_bytes".into(), bytes.len().into());
    }
    // What is stored must load: a forest that would not decode is refused here, not at scoring.
    if Forest::from_bytes(&bytes).as_ref() != Ok(m.forest) {
        raise(
            ERRCODE_INTERNAL_ERROR,
            format!(
                "model \"{}\" does not survive its own encoding; nothing was stored",
                m.name
            ),
            None,
        );
    }
    // Versions are numbered one at a time per tenant (shared models: the nil tenant).
    locks::lock_until_end(
        m.tenant.unwrap_or_default().as_bytes(),
        locks::LockKind::Models,
    );
    let version = as_superuser(|| {
        Spi::connect_mut(|client| {
            client.update(
                "UPDATE custos.models SET active = false
                  WHERE tenant_id IS NOT DISTINCT FROM $1 AND name = $2 AND active",
                None,
                &[owner.into(), m.name.into()],
            )?;
            let mut rows = client.update(
                "INSERT INTO custos.models (name, version, tenant_id, kind, parameters, feature_names,
                                            normalisation, training_rows, metrics, model, created_by, active)
                 SELECT $2, coalesce(max(version), 0) + 1, $1, $3, $4, $5, $6, $7, $8, $9, $10, true
                   FROM custos.models WHERE tenant_id IS NOT DISTINCT FROM $1 AND name = $2
                 RETURNING version",
                None,
                &[
                    owner.into(),
                    m.name.into(),
                    kind.into(),
                    JsonB(m.parameters).into(),
                    m.feature_names.to_vec().into(),
                    JsonB(m.normalisation).into(),
                    m.training_rows.into(),
                    JsonB(metrics).into(),
                    bytes.into(),
                    creator.into(),
                ],
            )?;
            let version = rows.next().and_then(|r| r.get::<i32>(1).ok().flatten());
            // A tenant's new model is on its record: who trained what, when.
            if let (Some(tenant), Some(v)) = (owner, version) {
                client.update(
                    "INSERT INTO custos.events (tenant_id, action, entity_type, entity_id, severity, details)
                     VALUES ($1, 'custos.model_trained', 'model', $2, 'info',
                             jsonb_build_object('version', $3::int, 'kind', $4::text, 'training_rows', $5::bigint))",
                    None,
                    &[tenant.into(), m.name.into(), v.into(), kind.into(), m.training_rows.into()],
                )?;
            }
            Ok(version)
        })
    })
    .unwrap_or_else(|e: pgrx::spi::Error| {
        raise(ERRCODE_INTERNAL_ERROR, format!("storing model \"{}\": {e}", m.name), None)
    });
    cache::invalidate_models_everywhere();
    version.unwrap_or_else(|| raise(ERRCODE_INTERNAL_ERROR, "the new model has no version", None))
}

/// `custos_internal.invalidate_model_cache()`: ages every session's cached models (the
/// statement trigger of custos.models calls it).
#[pg_extern(volatile, parallel_unsafe)]
fn invalidate_model_cache() {
    cache::invalidate_models_everywhere();
}
