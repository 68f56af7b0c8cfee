//! Compute threads beside a backend. PostgreSQL's signal handlers expect to run on the backend's
//! own thread (they set its latch and its interrupt flags), so a thread custos starts blocks
//! every signal for its whole life; it never calls into PostgreSQL either. The backend keeps
//! handling interrupts (cancel, statement_timeout) between the batches it hands out.

use std::thread::{Scope, ScopedJoinHandle};

/// Runs `start` (which starts a thread) with every signal blocked, so the thread inherits the
/// full mask; the calling thread's mask is restored afterwards.
fn with_signals_blocked<R>(start: impl FnOnce() -> R) -> R {
    // SAFETY: plain libc calls on sigset_t values owned here; the mask is restored below.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let out = start();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        out
    }
}

/// Spawns `f` on a scoped thread that has every signal blocked; None if the thread could not be
/// started (the caller then does the work itself).
pub fn spawn_quiet<'scope, 'env, T: Send + 'scope>(
    scope: &'scope Scope<'scope, 'env>,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Option<ScopedJoinHandle<'scope, T>> {
    with_signals_blocked(|| {
        std::thread::Builder::new()
            .name("custos-score".into())
            .spawn_scoped(scope, f)
            .ok()
    })
}

/// Spawns `f` on a detached thread with every signal blocked; false if it could not start. For
/// work that may outlive the call that started it (an HTTP exchange left behind by a cancel).
pub fn spawn_detached_quiet(name: &str, f: impl FnOnce() + Send + 'static) -> bool {
    with_signals_blocked(|| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(f)
            .is_ok()
    })
}
