//! Calls that would queue behind each other travel together.
//!
//! A [`Coalescer`] lets at most `max_in_flight` calls of one kind (adds of a queue, or
//! completions of a worker) wait for Redis at once. An item that finds a free slot goes out
//! at once, alone ([`Route::Now`]); an item that finds every slot taken waits
//! ([`Route::Later`]), and whichever call ends next takes every waiting item (up to
//! `max_batch`, and up to `max_weight` of summed weight) and sends them together in one call.
//! Nothing waits on a timer: a lone item is never held back, and items only travel together
//! when they would otherwise have queued on the connection. This is what lets a script that
//! handles a list of jobs pay its per-call work (the `EVALSHA` itself, reading `meta`,
//! trimming the events stream) once for many jobs.
//!
//! A waiting item whose caller gives up before it was sent is taken back and never sent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// What a runner returns: one output per item, in order.
pub type BatchFuture<O> = Pin<Box<dyn Future<Output = Vec<O>> + Send>>;

/// Sends a batch of items in one call and answers one output per item, in order. A runner is
/// given with each item rather than stored, so that it may own what holds the coalescer.
pub type Runner<I, O> = Arc<dyn Fn(Vec<I>) -> BatchFuture<O> + Send + Sync>;

struct Waiting<I, O> {
    seq: u64,
    item: I,
    weight: usize,
    reply: oneshot::Sender<O>,
}

struct State<I, O> {
    in_flight: usize,
    waiting: VecDeque<Waiting<I, O>>,
    next_seq: u64,
}

/// Lets calls that would queue behind each other travel together. See the module docs.
pub struct Coalescer<I, O> {
    state: Mutex<State<I, O>>,
    max_in_flight: usize,
    max_batch: usize,
    max_weight: usize,
}

impl<I, O> std::fmt::Debug for Coalescer<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Coalescer")
            .field("in_flight", &st.in_flight)
            .field("waiting", &st.waiting.len())
            .field("max_in_flight", &self.max_in_flight)
            .finish()
    }
}

/// How one item goes out.
pub enum Route<I: Send + 'static, O: Send + 'static> {
    /// A slot was free: send the item now, alone. Drop the [`Slot`] when the call has ended;
    /// it then sends whatever waited meanwhile, or frees the slot.
    Now(Slot<I, O>, I),
    /// Every slot was taken: the item waits for a shared call.
    Later(Waiter<I, O>),
}

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// At most `max_in_flight` calls at once (at least 1), each with at most `max_batch`
    /// items (at least 1) and, past its first item, at most `max_weight` of summed weight.
    pub fn new(max_in_flight: usize, max_batch: usize, max_weight: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                in_flight: 0,
                waiting: VecDeque::new(),
                next_seq: 0,
            }),
            max_in_flight: max_in_flight.max(1),
            max_batch: max_batch.max(1),
            max_weight,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State<I, O>> {
        // Nothing panics while the lock is held; should it ever, the state is still whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides how `item` (of `weight`, e.g. its size in bytes) goes out; `runner` sends the
    /// batches of items that wait.
    pub fn route(self: &Arc<Self>, item: I, weight: usize, runner: &Runner<I, O>) -> Route<I, O> {
        let mut st = self.lock();
        if st.in_flight < self.max_in_flight {
            st.in_flight += 1;
            drop(st);
            return Route::Now(
                Slot {
                    coalescer: Some(Arc::clone(self)),
                    runner: Arc::clone(runner),
                },
                item,
            );
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        st.waiting.push_back(Waiting {
            seq,
            item,
            weight,
            reply: tx,
        });
        drop(st);
        Route::Later(Waiter {
            coalescer: Arc::clone(self),
            seq,
            rx: Some(rx),
        })
    }

    /// Takes the next batch of waiting items, or frees the caller's slot when none wait.
    fn next_batch(&self) -> Option<Vec<Waiting<I, O>>> {
        let mut st = self.lock();
        if st.waiting.is_empty() {
            st.in_flight = st.in_flight.saturating_sub(1);
            return None;
        }
        let mut batch = Vec::with_capacity(st.waiting.len().min(self.max_batch));
        let mut weight = 0usize;
        while let Some(front) = st.waiting.front() {
            let full = batch.len() == self.max_batch
                || weight.saturating_add(front.weight) > self.max_weight;
            if !batch.is_empty() && full {
                break;
            }
            weight = weight.saturating_add(front.weight);
            if let Some(w) = st.waiting.pop_front() {
                batch.push(w);
            }
        }
        Some(batch)
    }

    /// Takes back the waiting item `seq`; false when it was already sent.
    fn withdraw(&self, seq: u64) -> bool {
        let mut st = self.lock();
        match st.waiting.iter().position(|w| w.seq == seq) {
            Some(i) => {
                st.waiting.remove(i);
                true
            }
            None => false,
        }
    }
}

/// One in-flight slot, held by the caller that sends its item alone. On drop, the slot goes
/// to the items that waited meanwhile (a task sends them), or is freed.
pub struct Slot<I: Send + 'static, O: Send + 'static> {
    coalescer: Option<Arc<Coalescer<I, O>>>,
    runner: Runner<I, O>,
}

impl<I: Send + 'static, O: Send + 'static> Drop for Slot<I, O> {
    fn drop(&mut self) {
        let Some(coalescer) = self.coalescer.take() else {
            return;
        };
        let Some(batch) = coalescer.next_batch() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(drain(coalescer, Arc::clone(&self.runner), batch));
            }
            Err(_) => {
                // No runtime to send from (it is shutting down): the waiting callers see
                // their reply channel closed, and nothing was sent.
                let mut st = coalescer.lock();
                st.in_flight = st.in_flight.saturating_sub(1);
                st.waiting.clear();
            }
        }
    }
}

/// Sends batches until nothing waits, then frees the slot.
async fn drain<I: Send + 'static, O: Send + 'static>(
    coalescer: Arc<Coalescer<I, O>>,
    runner: Runner<I, O>,
    mut batch: Vec<Waiting<I, O>>,
) {
    loop {
        let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) =
            batch.into_iter().map(|w| (w.item, w.reply)).unzip();
        let outputs = runner(items).await;
        // A runner that answers too few outputs leaves the rest with a closed channel.
        for (reply, out) in replies.into_iter().zip(outputs) {
            let _ = reply.send(out);
        }
        match coalescer.next_batch() {
            Some(next) => batch = next,
            None => return,
        }
    }
}

/// How a wait with a deadline ended.
#[derive(Debug)]
pub enum Waited<O> {
    /// The shared call answered.
    Done(O),
    /// The deadline passed before the item was sent: it was taken back and is never sent.
    NotSent,
    /// The deadline passed after the item was sent: its outcome is unknown.
    SentNoAnswer,
    /// The call carrying the item was abandoned (its runtime shut down); the item may or may
    /// not have been sent.
    Abandoned,
}

/// An item waiting for a shared call. Dropped (or its wait dropped) before its item was
/// sent, it takes the item back.
pub struct Waiter<I: Send + 'static, O: Send + 'static> {
    coalescer: Arc<Coalescer<I, O>>,
    seq: u64,
    rx: Option<oneshot::Receiver<O>>,
}

impl<I: Send + 'static, O: Send + 'static> Waiter<I, O> {
    /// Waits for the item's output; `None` when the call carrying it was abandoned.
    pub async fn wait(mut self) -> Option<O> {
        let out = match self.rx.as_mut() {
            Some(rx) => rx.await.ok(),
            None => None,
        };
        self.rx = None;
        out
    }

    /// Waits for the item's output until `deadline`.
    pub async fn wait_until(mut self, deadline: tokio::time::Instant) -> Waited<O> {
        let Some(rx) = self.rx.as_mut() else {
            return Waited::Abandoned;
        };
        let waited = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(out)) => Waited::Done(out),
            Ok(Err(_)) => Waited::Abandoned,
            Err(_) => {
                if self.coalescer.withdraw(self.seq) {
                    Waited::NotSent
                } else {
                    Waited::SentNoAnswer
                }
            }
        };
        self.rx = None;
        waited
    }
}

impl<I: Send + 'static, O: Send + 'static> Drop for Waiter<I, O> {
    fn drop(&mut self) {
        if self.rx.is_some() {
            self.coalescer.withdraw(self.seq);
        }
    }
}
