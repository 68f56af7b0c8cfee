//! Locks custos takes per tenant: lock tags of the advisory type whose `objsubid` is custos' own,
//! which SQL's advisory-lock functions (objsubid 1 and 2) cannot take, so no role can block them by
//! guessing a key. Every kind of lock custos takes is listed here, so that no two collide.

use pgrx::pg_sys;

/// The kinds of tenant lock, each with its `objsubid` in `pg_locks` (locktype advisory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum LockKind {
    /// A tenant's ledger chain (custos.events).
    Ledger = 0xC5,
    /// A tenant's access-log chain.
    AccessLog = 0xC6,
    /// One activity fold at a time per tenant (custos.dormant_users).
    ActivityFold = 0xC7,
    /// New versions of a tenant's anomaly models (custos.if_train), numbered one at a time.
    Models = 0xC8,
    /// A tenant's AI budget and breakers when custos is not preloaded (no shared memory): one
    /// provider call of the tenant at a time.
    AiBudget = 0xC9,
}

/// The lock tag of `kind` for `tenant` in `database`. Two tenants may share one (a 64-bit fold
/// of the UUID); that only costs concurrency, never correctness.
pub fn tenant_lock_tag(database: u32, tenant: &[u8; 16], kind: LockKind) -> pg_sys::LOCKTAG {
    let hi = u64::from_be_bytes(tenant[..8].try_into().unwrap_or_default());
    let lo = u64::from_be_bytes(tenant[8..].try_into().unwrap_or_default());
    let folded = hi ^ lo.rotate_left(29);
    pg_sys::LOCKTAG {
        locktag_field1: database,
        locktag_field2: (folded >> 32) as u32,
        locktag_field3: folded as u32,
        locktag_field4: kind as u16,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Waits for and takes a tenant's lock of `kind` until the end of the transaction.
pub fn lock_until_end(tenant: &[u8; 16], kind: LockKind) {
    // SAFETY: reading a backend global.
    let tag = tenant_lock_tag(unsafe { pg_sys::MyDatabaseId }.to_u32(), tenant, kind);
    // SAFETY: backend thread inside a transaction; a transaction-level lock, released at its end
    // by its resource owner; LockAcquire raises ERROR on deadlock.
    unsafe {
        pg_sys::LockAcquire(
            &tag,
            pg_sys::ExclusiveLock as pg_sys::LOCKMODE,
            false,
            false,
        );
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn lock_tags_differ_per_tenant_and_use_custos_objsubids() {
        let a = tenant_lock_tag(5, &[1; 16], LockKind::Ledger);
        let b = tenant_lock_tag(5, &[2; 16], LockKind::Ledger);
        assert_eq!(a.locktag_field1, 5);
        assert_ne!(
            (a.locktag_field2, a.locktag_field3),
            (b.locktag_field2, b.locktag_field3)
        );
        assert_eq!(a.locktag_field4, 0xC5);
        // SQL's pg_advisory_lock uses 1 and 2.
        for kind in [
            LockKind::Ledger,
            LockKind::AccessLog,
            LockKind::ActivityFold,
            LockKind::Models,
        ] {
            assert!(kind as u16 > 2);
        }
    }
}
