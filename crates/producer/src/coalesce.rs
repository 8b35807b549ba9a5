//! Concurrent single adds share script calls.
//!
//! `Queue::add` sends its job at once when fewer than [`MAX_IN_FLIGHT`] add calls of this
//! queue are waiting for Redis. Past that, the job waits in a short queue, and the next call
//! to finish takes every waiting job (up to [`MAX_BATCH`]) and sends them together through
//! the bulk-capable add script, each job with its own options, events and outcome. Nothing
//! waits on a timer: a lone add goes out alone, and adds only travel together when they
//! would otherwise queue behind each other on the connection. One add script call per job
//! costs Redis about as much as a whole batch's per-call overhead (docs/benchmarks.md), so
//! under concurrency this both lowers Redis's CPU per add and raises throughput.
//!
//! What stays true per add: it is validated before anything is queued; the add script has no
//! per-job failure, so one job cannot make another fail; a caller that gives up before its
//! job was sent takes the job back, so it is never added; and with a producer-preset
//! connection, a caller never waits longer than the connection's request deadline, counted
//! from when it called `add` (after that, a job that was never sent is reported as not
//! applied, and one that was sent as "may or may not have been applied").

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bullpen_core::script::ADD_JOB;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::queue::{AddOutcome, Prepared, Queue};

/// Add calls of one queue in flight at once before adds start to travel together.
pub(crate) const MAX_IN_FLIGHT: usize = 2;
/// Most jobs sent in one shared call.
pub(crate) const MAX_BATCH: usize = 256;
/// Most bytes of job data in one shared call (a single larger job still goes alone).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// One add waiting for a call.
struct Waiting {
    seq: u64,
    job: Prepared,
    reply: oneshot::Sender<Result<AddOutcome>>,
}

#[derive(Default)]
struct State {
    in_flight: usize,
    waiting: VecDeque<Waiting>,
    next_seq: u64,
}

/// The per-queue state shared by every clone of a `Queue`.
#[derive(Default)]
pub(crate) struct Coalescer {
    state: Mutex<State>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("Coalescer")
            .field("in_flight", &st.in_flight)
            .field("waiting", &st.waiting.len())
            .finish()
    }
}

/// How one add goes out.
pub(crate) enum Route {
    /// Send it now, alone; the guard gives the slot back (or hands it on) when dropped.
    Now(Box<(FlightGuard, Prepared)>),
    /// Wait for a shared call.
    Later(WaitGuard, oneshot::Receiver<Result<AddOutcome>>),
}

impl Coalescer {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover the state if something ever did.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides how `job` goes out.
    pub(crate) fn route(queue: &Queue, job: Prepared) -> Route {
        let me = queue.coalescer();
        let mut st = me.lock();
        if st.in_flight < MAX_IN_FLIGHT {
            st.in_flight += 1;
            drop(st);
            return Route::Now(Box::new((
                FlightGuard {
                    queue: Some(queue.clone()),
                },
                job,
            )));
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        st.waiting.push_back(Waiting {
            seq,
            job,
            reply: tx,
        });
        drop(st);
        Route::Later(
            WaitGuard {
                coalescer: Arc::clone(me),
                seq,
                done: false,
            },
            rx,
        )
    }

    /// Takes the next batch of waiting jobs, or gives the caller's slot back when none wait.
    fn next_batch(&self) -> Option<Vec<Waiting>> {
        let mut st = self.lock();
        if st.waiting.is_empty() {
            st.in_flight = st.in_flight.saturating_sub(1);
            return None;
        }
        let mut batch = Vec::with_capacity(st.waiting.len().min(MAX_BATCH));
        let mut bytes = 0usize;
        while let Some(front) = st.waiting.front() {
            let size = front.job.data_len();
            if !batch.is_empty() && (batch.len() == MAX_BATCH || bytes + size > MAX_BATCH_BYTES) {
                break;
            }
            bytes += size;
            if let Some(w) = st.waiting.pop_front() {
                batch.push(w);
            }
        }
        Some(batch)
    }
}

/// Holds one in-flight slot. On drop, the slot goes to the jobs that waited meanwhile (a task
/// sends them), or is given back.
pub(crate) struct FlightGuard {
    queue: Option<Queue>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let Some(queue) = self.queue.take() else {
            return;
        };
        let Some(batch) = queue.coalescer().next_batch() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(drain(queue, batch));
            }
            Err(_) => {
                // No runtime to send them from (it is shutting down): the waiting callers get
                // an error from their dropped reply channel, and nothing was sent.
                let mut st = queue.coalescer().lock();
                st.in_flight = st.in_flight.saturating_sub(1);
                let rest: Vec<Waiting> = st.waiting.drain(..).collect();
                drop(st);
                drop(rest);
                drop(batch);
            }
        }
    }
}

/// Sends batches until nobody waits, then gives the slot back.
async fn drain(queue: Queue, mut batch: Vec<Waiting>) {
    loop {
        let (jobs, replies): (Vec<Prepared>, Vec<_>) =
            batch.into_iter().map(|w| (w.job, w.reply)).unzip();
        let n = replies.len();
        match queue.run_add(jobs).await {
            Ok(outcomes) if outcomes.len() == n => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Ok(outcomes) => {
                let e = Error::Core(bullpen_core::Error::ScriptReply {
                    script: ADD_JOB.name(),
                    reason: format!("expected {n} outcomes, got {}", outcomes.len()),
                });
                for reply in replies {
                    let _ = reply.send(Err(share(&e)));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(share(&e)));
                }
            }
        }
        match queue.coalescer().next_batch() {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// The same failure for every job of a shared call.
fn share(e: &Error) -> Error {
    match e {
        Error::Core(bullpen_core::Error::Redis { script, source }) => {
            Error::Core(bullpen_core::Error::Redis {
                script,
                source: source.clone(),
            })
        }
        Error::Core(bullpen_core::Error::ScriptReply { script, reason }) => {
            Error::Core(bullpen_core::Error::ScriptReply {
                script,
                reason: reason.clone(),
            })
        }
        other => Error::Core(bullpen_core::Error::ScriptReply {
            script: ADD_JOB.name(),
            reason: other.to_string(),
        }),
    }
}

/// A waiting add's claim on its job. Dropped before its job was sent (the caller gave up),
/// it takes the job back, so that it is never added.
pub(crate) struct WaitGuard {
    coalescer: Arc<Coalescer>,
    seq: u64,
    done: bool,
}

impl WaitGuard {
    /// Takes the job back if it was not sent yet; true if it was taken back.
    fn withdraw(&mut self) -> bool {
        self.done = true;
        let mut st = self.coalescer.lock();
        match st.waiting.iter().position(|w| w.seq == self.seq) {
            Some(i) => {
                st.waiting.remove(i);
                true
            }
            None => false,
        }
    }

    /// Waits for the outcome, at most until `deadline` (the connection's request deadline,
    /// counted from the add call).
    pub(crate) async fn wait(
        mut self,
        rx: oneshot::Receiver<Result<AddOutcome>>,
        deadline: Option<(Instant, Duration)>,
        target: impl FnOnce() -> String,
    ) -> Result<AddOutcome> {
        let received = match deadline {
            None => rx.await,
            Some((at, budget)) => match tokio::time::timeout_at(at.into(), rx).await {
                Ok(r) => r,
                Err(_) => {
                    let source = if self.withdraw() {
                        // Never sent: definitely not applied.
                        bullpen_conn::Error::Unavailable {
                            target: target(),
                            waited: budget,
                            last_error: None,
                        }
                    } else {
                        bullpen_conn::Error::CommandTimeout {
                            command: "EVALSHA".into(),
                            after: budget,
                        }
                    };
                    return Err(Error::Core(bullpen_core::Error::Redis {
                        script: ADD_JOB.name(),
                        source,
                    }));
                }
            },
        };
        self.done = true;
        received.unwrap_or_else(|_| {
            Err(Error::Core(bullpen_core::Error::ScriptReply {
                script: ADD_JOB.name(),
                reason: "the shared add call was abandoned (runtime shutting down); the job may or may not have been added".into(),
            }))
        })
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if !self.done {
            self.withdraw();
        }
    }
}
