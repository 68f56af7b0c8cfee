//! Refuses statements that would take the ledger away: `DROP EXTENSION custos`,
//! `DROP SCHEMA custos … CASCADE`, and `ALTER EXTENSION custos DROP …` (which would detach a ledger
//! table so that it could be dropped). An event trigger on `ddl_command_start` written in C ABI,
//! because only the parse tree says which extension or schema a DROP names; pgrx has no wrapper
//! for event-trigger functions.

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
                "custos.guard_ledger_drop() must be called as an event trigger",
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
