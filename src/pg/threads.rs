//! Compute threads beside a backend. PostgreSQL's signal handlers expect to run on the backend's
//! own thread (they set its latch and its interrupt flags), so a thread custos starts blocks
//! every signal for its whole life; it never calls into PostgreSQL either. The backend keeps
//! handling interrupts (cancel, statement_timeout) between the batches it hands out.

use std::thread::{Scope, ScopedJoinHandle};

/// Spawns `f` on a scoped thread that has every signal blocked; None if the thread could not be
/// started (the caller then does the work itself).
pub fn spawn_quiet<'scope, 'env, T: Send + 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Option<ScopedJoinHandle<'scope, T>> {
    // SAFETY: plain libc calls on sigset_t values owned here; the calling thread's mask is
    // restored before returning, and the new thread inherits the full mask at creation.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let handle = std::thread::Builder::new()
            .name("custos-score".into())
            .spawn_scoped(scope, f)
            .ok();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        handle
    }
}
