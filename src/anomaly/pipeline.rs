//! Scoring a stream of batches on threads beside the backend. The backend reads the batches
//! (SPI, on its own thread), hands them to the workers and emits their scores in order; when
//! every worker is busy it scores the batch itself, so reading and scoring overlap and both
//! cores stay busy.

use crate::pg::threads::spawn_quiet;
use custos_core::anomaly::forest::{Forest, ForestError};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

type Done = (u64, Vec<f64>, Result<Vec<f64>, ForestError>);

fn score(forest: &Forest, data: &[f64]) -> Result<Vec<f64>, ForestError> {
    let mut out = vec![0.0; data.len() / forest.features().max(1)];
    forest.score_rows(data, &mut out).map(|()| out)
}

/// Reads batches with `next` (which appends rows to the buffer and returns how many; 0 at the
/// end), scores them on `workers` extra threads and this one, and passes each batch's scores to
/// `emit` in reading order.
pub fn score_batches(
    forest: &Forest,
    workers: usize,
    mut next: impl FnMut(&mut Vec<f64>) -> usize,
    mut emit: impl FnMut(&[f64]),
) -> Result<(), ForestError> {
    if workers == 0 {
        let mut data = Vec::new();
        loop {
            data.clear();
            if next(&mut data) == 0 {
                return Ok(());
            }
            emit(&score(forest, &data)?);
        }
    }
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = mpsc::channel::<(u64, Vec<f64>)>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<Done>();
        let mut started = 0usize;
        for _ in 0..workers {
            let (jobs, done) = (job_rx.clone(), done_tx.clone());
            let work = move || loop {
                let job = match jobs.lock() {
                    Ok(rx) => rx.recv(),
                    Err(_) => return,
                };
                let Ok((i, data)) = job else { return };
                let scores = score(forest, &data);
                if done.send((i, data, scores)).is_err() {
                    return;
                }
            };
            if spawn_quiet(scope, work).is_some() {
                started += 1;
            }
        }
        drop(done_tx);
        let mut ready: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        let mut spare: Vec<Vec<f64>> = Vec::new();
        let (mut read, mut emitted, mut queued) = (0u64, 0u64, 0usize);
        let take = |r: Done, ready: &mut BTreeMap<u64, Vec<f64>>, spare: &mut Vec<Vec<f64>>| {
            spare.push(r.1);
            r.2.map(|scores| {
                ready.insert(r.0, scores);
            })
        };
        loop {
            let mut data = spare.pop().unwrap_or_default();
            data.clear();
            if next(&mut data) == 0 {
                break;
            }
            // Keep each worker two batches ahead; beyond that, score here.
            if queued < 2 * started {
                if let Err(mpsc::SendError((_, data))) = job_tx.send((read, data)) {
                    ready.insert(read, score(forest, &data)?);
                } else {
                    queued += 1;
                }
            } else {
                ready.insert(read, score(forest, &data)?);
                spare.push(data);
            }
            read += 1;
            while let Ok(r) = done_rx.try_recv() {
                queued -= 1;
                take(r, &mut ready, &mut spare)?;
            }
            while let Some(scores) = ready.remove(&emitted) {
                emit(&scores);
                emitted += 1;
            }
        }
        drop(job_tx);
        while emitted < read {
            while let Some(scores) = ready.remove(&emitted) {
                emit(&scores);
                emitted += 1;
            }
            if emitted == read {
                break;
            }
            // A worker that died (it cannot, short of a bug) closes the channel: score here.
            match done_rx.recv() {
                Ok(r) => take(r, &mut ready, &mut spare)?,
                Err(_) => return Err(ForestError::Corrupt("a scoring thread stopped")),
            }
        }
        Ok(())
    })
}
