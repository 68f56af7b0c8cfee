//! Refuses statements that would take the ledger away, in two layers:
//!
//! - an event trigger on `ddl_command_start`, in C ABI (only the parse tree says which extension
//!   or schema a DROP names; pgrx has no wrapper for event-trigger functions), refuses
//!   `DROP EXTENSION custos`, `DROP SCHEMA custos … CASCADE` and `ALTER EXTENSION custos DROP …`
//!   (which would detach a ledger table so that it could be dropped) with a clear message;
//! - an object-access hook sees what a statement really drops, however it got there:
//!   `DROP EXTENSION vector CASCADE`, `DROP SCHEMA public CASCADE`, `DROP OWNED BY` the role that
//!   installed custos, a `DROP TYPE … CASCADE` that would take a column of a custos table. The
//!   event trigger fires for every DDL command, so the library (and with it the hook) is loaded
//!   before any drop runs, preloaded or not.

use crate::error::raise;
use crate::gucs;
use pgrx::{pg_sys, PgSqlErrorCode};
use std::ffi::CStr;

unsafe fn names_custos(list: *mut pg_sys::List) -> bool {
    unsafe {
        if list.is_null() {
            return false;
        }
        (0..(*list).length as usize).any(|i| {
            let node = (*(*list).elements.add(i)).ptr_value.cast::<pg_sys::Node>();
            !node.is_null()
                && (*node).type_ == pg_sys::NodeTag::T_String
                && CStr::from_ptr((*node.cast::<pg_sys::String>()).sval).to_bytes() == b"custos"
        })
    }
}

/// Whether the statement would drop the extension, its schema, or detach one of its objects.
unsafe fn takes_the_ledger_away(tree: *mut pg_sys::Node) -> bool {
    unsafe {
        if tree.is_null() {
            return false;
        }
        match (*tree).type_ {
            pg_sys::NodeTag::T_DropStmt => {
                let drop = tree.cast::<pg_sys::DropStmt>();
                matches!(
                    (*drop).removeType,
                    pg_sys::ObjectType::OBJECT_EXTENSION | pg_sys::ObjectType::OBJECT_SCHEMA
                ) && names_custos((*drop).objects)
            }
            pg_sys::NodeTag::T_AlterExtensionContentsStmt => {
                let alter = tree.cast::<pg_sys::AlterExtensionContentsStmt>();
                (*alter).action < 0 && CStr::from_ptr((*alter).extname).to_bytes() == b"custos"
            }
            _ => false,
        }
    }
}

crate::fmgr_v1_info!(pg_finfo_custos_guard_ledger_drop);

/// # Safety
/// Called by PostgreSQL's function manager as an event trigger function.
#[pgrx::pg_guard]
#[unsafe(no_mangle)]
pub unsafe extern "C-unwind" fn custos_guard_ledger_drop(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        let context = (*fcinfo).context;
        if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_EventTriggerData {
            raise(
                PgSqlErrorCode::ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED,
                "custos_internal.guard_ledger_drop() must be called as an event trigger",
                None,
            );
        }
        let tree = (*context.cast::<pg_sys::EventTriggerData>()).parsetree;
        if takes_the_ledger_away(tree) && !gucs::ALLOW_LEDGER_DROP.get() {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "custos holds the audit ledger and cannot be dropped or taken apart",
                Some("a superuser who really means to destroy the ledger sets custos.allow_ledger_drop = on in the session first"),
            );
        }
        pg_sys::Datum::from(0usize)
    }
}

static mut PREVIOUS_OBJECT_ACCESS_HOOK: pg_sys::object_access_hook_type = None;

/// Whether dropping this object takes the ledger away: the extension itself, or a relation that
/// belongs to it (or a column of one, which a `DROP TYPE … CASCADE` could take). Relations that
/// merely sit in schema custos are left alone: the transient heap of a `VACUUM FULL` or
/// `CLUSTER` of a ledger table, an index a `REINDEX CONCURRENTLY` replaces. Drops by custos' own
/// scripts (`ALTER EXTENSION custos UPDATE`) are custos' business.
unsafe fn is_ledger_object(class_id: pg_sys::Oid, object_id: pg_sys::Oid) -> bool {
    // SAFETY: catalog lookups inside the transaction of the DROP; missing objects give InvalidOid.
    unsafe {
        if pg_sys::creating_extension {
            return false;
        }
        if class_id != pg_sys::ExtensionRelationId && class_id != pg_sys::RelationRelationId {
            return false;
        }
        let custos = pg_sys::get_extension_oid(c"custos".as_ptr(), true);
        if custos == pg_sys::InvalidOid {
            return false;
        }
        if class_id == pg_sys::ExtensionRelationId {
            return object_id == custos;
        }
        pg_sys::getExtensionOfObject(class_id, object_id) == custos
    }
}

/// Guarded: the refusal is a Rust panic that must become a PostgreSQL ERROR before it reaches C.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn on_object_access(
    access: pg_sys::ObjectAccessType::Type,
    class_id: pg_sys::Oid,
    object_id: pg_sys::Oid,
    sub_id: std::ffi::c_int,
    arg: *mut std::ffi::c_void,
) {
    // SAFETY: the previous hook was saved at load time and is called as PostgreSQL would.
    unsafe {
        if let Some(previous) = PREVIOUS_OBJECT_ACCESS_HOOK {
            previous(access, class_id, object_id, sub_id, arg);
        }
        if access == pg_sys::ObjectAccessType::OAT_DROP
            && !gucs::ALLOW_LEDGER_DROP.get()
            && is_ledger_object(class_id, object_id)
        {
            raise(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "this statement would drop custos' audit ledger (directly or through a cascade)",
                Some("custos depends on the objects being dropped; a superuser who really means to destroy the ledger sets custos.allow_ledger_drop = on in the session first"),
            );
        }
    }
}

/// Installs the object-access hook, chaining any previous one; from `_PG_init`.
pub fn init() {
    // SAFETY: backend thread at load time; the previous hook is kept and called first.
    unsafe {
        PREVIOUS_OBJECT_ACCESS_HOOK = pg_sys::object_access_hook;
        pg_sys::object_access_hook = Some(on_object_access);
    }
}
