//! What the background workers share, in shared memory under one LWLock (held to read or update
//! a slot, never while waiting): each worker's slot (its database, heartbeat, what it is doing,
//! its counters), and each remote provider's gate (a token bucket of requests a minute and the
//! calls in flight). Exists only when custos is preloaded, as the workers do.

use custos_core::jobs::TokenBucket;
use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};
use std::sync::atomic::{AtomicBool, Ordering};

const SLOTS: usize = 64;
const PROVIDERS: usize = 3;

/// What a worker is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Activity {
    #[default]
    Idle = 0,
    Waiting = 1,
    Embedding = 2,
    Delivering = 3,
    Job = 4,
}

impl Activity {
    pub fn name(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Waiting => "waiting for custos",
            Activity::Embedding => "embedding",
            Activity::Delivering => "delivering notifications",
            Activity::Job => "running a job",
        }
    }

    fn of(v: u8) -> Activity {
        match v {
            1 => Activity::Waiting,
            2 => Activity::Embedding,
            3 => Activity::Delivering,
            4 => Activity::Job,
            _ => Activity::Idle,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Slot {
    used: bool,
    database: u32,
    pid: i32,
    started_ms: i64,
    heartbeat_ms: i64,
    activity: u8,
    activity_ms: i64,
    tenant: [u8; 16],
    /// The job's index in custos_internal.job_names(), for Activity::Job.
    job: u8,
    done: i64,
    total: i64,
    embedded: u64,
    delivered: u64,
    failures: u64,
    /// Places this worker holds at each provider's gate: given back when it exits, however.
    held: [u32; PROVIDERS],
}

#[derive(Clone, Copy)]
struct Gate {
    bucket: TokenBucket,
    in_flight: u32,
}

#[derive(Clone, Copy)]
pub struct Board {
    slots: [Slot; SLOTS],
    gates: [Gate; PROVIDERS],
    launcher_pid: i32,
    launcher_heartbeat_ms: i64,
}

impl Default for Board {
    fn default() -> Self {
        Board {
            slots: [Slot::default(); SLOTS],
            gates: [Gate {
                bucket: TokenBucket::new(0, 1, 0),
                in_flight: 0,
            }; PROVIDERS],
            launcher_pid: 0,
            launcher_heartbeat_ms: 0,
        }
    }
}

// SAFETY: plain data (no pointers), the same layout in every process of the server.
#[allow(unsafe_code)]
unsafe impl PGRXSharedMemory for Board {}

// SAFETY: the lock's name is unique to custos; pg_shmem_init! registers it in init().
#[allow(unsafe_code)]
static BOARD: PgLwLock<Board> = unsafe { PgLwLock::new(c"custos_workers") };
static READY: AtomicBool = AtomicBool::new(false);

/// Called from _PG_init: asks for the board when the library is being preloaded.
#[allow(unexpected_cfgs)]
pub fn init() {
    if crate::pg::backend::preloading() {
        pg_shmem_init!(BOARD);
        READY.store(true, Ordering::SeqCst);
    }
}

/// Whether the board exists (custos was preloaded).
pub fn ready() -> bool {
    READY.load(Ordering::SeqCst)
}

fn now_ms() -> i64 {
    crate::pg::backend::now() / 1000
}

/// The launcher's heartbeat.
pub fn launcher_alive(pid: i32) {
    if ready() {
        let mut b = BOARD.exclusive();
        b.launcher_pid = pid;
        b.launcher_heartbeat_ms = now_ms();
    }
}

/// Takes a slot for this worker (its database and pid); None if all are taken.
pub fn register(database: u32, pid: i32) -> Option<usize> {
    if !ready() {
        return None;
    }
    let now = now_ms();
    let mut b = BOARD.exclusive();
    // A slot left by a worker that was killed before it could free it is taken over; one whose
    // worker still runs is not: a database has one worker.
    let same = b
        .slots
        .iter()
        .position(|s| s.used && s.database == database);
    if let Some(i) = same {
        let other = b.slots[i].pid;
        // SAFETY: signal 0 only checks that the process exists.
        #[allow(unsafe_code)]
        if other != pid && unsafe { libc::kill(other, 0) } == 0 {
            return None;
        }
    }
    let i = same.or_else(|| b.slots.iter().position(|s| !s.used))?;
    b.slots[i] = Slot {
        used: true,
        database,
        pid,
        started_ms: now,
        heartbeat_ms: now,
        ..Slot::default()
    };
    Some(i)
}

/// Frees this worker's slot (at exit).
pub fn release(slot: usize, pid: i32) {
    if ready() && slot < SLOTS {
        let mut b = BOARD.exclusive();
        if b.slots[slot].pid == pid {
            // A worker ended mid-call (SIGTERM exits without unwinding): its places go back.
            let held = b.slots[slot].held;
            for (gate, n) in b.gates.iter_mut().zip(held) {
                gate.in_flight = gate.in_flight.saturating_sub(n);
            }
            b.slots[slot] = Slot::default();
        }
    }
}

/// Records what the worker does now (and beats its heart).
pub fn set_activity(
    slot: usize,
    activity: Activity,
    tenant: Option<[u8; 16]>,
    job: u8,
    total: i64,
) {
    if ready() && slot < SLOTS {
        let now = now_ms();
        let mut b = BOARD.exclusive();
        let s = &mut b.slots[slot];
        s.heartbeat_ms = now;
        if s.activity != activity as u8 || tenant.is_some_and(|t| t != s.tenant) {
            s.activity_ms = now;
        }
        s.activity = activity as u8;
        s.tenant = tenant.unwrap_or_default();
        s.job = job;
        s.done = 0;
        s.total = total;
    }
}

/// Counts finished work: items embedded or delivered, failed batches or deliveries.
pub fn count(slot: usize, embedded: u64, delivered: u64, failures: u64) {
    if ready() && slot < SLOTS {
        let mut b = BOARD.exclusive();
        let s = &mut b.slots[slot];
        s.done += (embedded + delivered) as i64;
        s.embedded += embedded;
        s.delivered += delivered;
        s.failures += failures;
        s.heartbeat_ms = now_ms();
    }
}

/// The workers whose processes still run: (database, pid).
#[allow(unsafe_code)]
pub fn live_workers() -> Vec<(u32, i32)> {
    if !ready() {
        return Vec::new();
    }
    let slots: Vec<(u32, i32)> = BOARD
        .share()
        .slots
        .iter()
        .filter(|s| s.used)
        .map(|s| (s.database, s.pid))
        .collect();
    // SAFETY: signal 0 only checks that the process exists.
    slots
        .into_iter()
        .filter(|(_, pid)| unsafe { libc::kill(*pid, 0) } == 0)
        .collect()
}

/// The pid of the worker serving `database`, if one runs.
pub fn worker_of(database: u32) -> Option<i32> {
    if !ready() {
        return None;
    }
    let b = BOARD.share();
    b.slots
        .iter()
        .find(|s| s.used && s.database == database)
        .map(|s| s.pid)
}

/// A worker's slot as custos.health() and custos.job_progress show it.
pub struct SlotView {
    pub database: u32,
    pub pid: i32,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    pub activity: Activity,
    pub activity_ms: i64,
    pub tenant: Option<[u8; 16]>,
    pub job: u8,
    pub done: i64,
    pub total: i64,
    pub embedded: u64,
    pub delivered: u64,
    pub failures: u64,
}

/// Every worker's slot, and the launcher's (pid, heartbeat).
pub fn snapshot() -> (Vec<SlotView>, Option<(i32, i64)>) {
    if !ready() {
        return (Vec::new(), None);
    }
    let b = BOARD.share();
    let slots = b
        .slots
        .iter()
        .filter(|s| s.used)
        .map(|s| SlotView {
            database: s.database,
            pid: s.pid,
            started_ms: s.started_ms,
            heartbeat_ms: s.heartbeat_ms,
            activity: Activity::of(s.activity),
            activity_ms: s.activity_ms,
            tenant: (s.tenant != [0; 16]).then_some(s.tenant),
            job: s.job,
            done: s.done,
            total: s.total,
            embedded: s.embedded,
            delivered: s.delivered,
            failures: s.failures,
        })
        .collect();
    let launcher = (b.launcher_pid != 0).then_some((b.launcher_pid, b.launcher_heartbeat_ms));
    (slots, launcher)
}

/// A call in flight through a provider's gate; dropping it frees its place.
pub struct Ticket {
    provider: usize,
    slot: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if ready() {
            let mut b = BOARD.exclusive();
            let g = &mut b.gates[self.provider];
            g.in_flight = g.in_flight.saturating_sub(1);
            let h = &mut b.slots[self.slot].held[self.provider];
            *h = h.saturating_sub(1);
        }
    }
}

/// A place for worker `slot`'s call to `provider` (0..3): within the requests a minute and the
/// calls in flight that every worker shares; else how many milliseconds to wait.
pub fn pass_gate(
    slot: usize,
    provider: u8,
    per_minute: u32,
    concurrency: u32,
) -> Result<Option<Ticket>, i64> {
    if !ready() || slot >= SLOTS {
        return Ok(None);
    }
    let p = usize::from(provider).min(PROVIDERS - 1);
    let now = now_ms();
    let mut b = BOARD.exclusive();
    b.slots[slot].held[p] += 1;
    let g = &mut b.gates[p];
    if g.bucket.per_minute != per_minute {
        // The rate changed (a reload): a new bucket, bursts of a tenth of a minute's requests.
        g.bucket = TokenBucket::new(per_minute, (per_minute / 10).max(1), now);
    }
    let admitted = if g.in_flight >= concurrency {
        Err(200)
    } else {
        g.bucket.take(now)
    };
    match admitted {
        Ok(()) => {
            g.in_flight += 1;
            Ok(Some(Ticket { provider: p, slot }))
        }
        Err(wait_ms) => {
            b.slots[slot].held[p] -= 1;
            Err(wait_ms)
        }
    }
}
