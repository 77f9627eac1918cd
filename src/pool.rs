//! The daemon-wide bound on files staged or verified at once
//! (`verify_workers`). A case's files go through the pool in parallel; cases
//! staged at the same time, and the cases verified again after a start,
//! share the same workers, so hashing never takes more than the pool's
//! size of threads, however many cases wait.
//!
//! Waiting for a worker costs no thread: a batch waits asynchronously and
//! hands each file to a blocking thread only once it holds a worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};

/// How often a batch waiting for a worker looks whether it was cancelled
/// (a close waits that long at most; hundreds of waiting cases after a
/// restart cost a few thousand cheap wake-ups a second).
const TICK: Duration = Duration::from_millis(100);

/// A batch's stop signal: read before each item starts, set by the pool
/// when an item failed. The items still running read it too (a staging
/// job's progress does) and stop as soon as they can.
pub trait Halt: Send + Sync + 'static {
    /// True once the batch should start nothing more: it was cancelled
    /// from outside, or [`halt`](Halt::halt) was called.
    fn halted(&self) -> bool;
    /// An item failed: the items still running should stop.
    fn halt(&self);
}

/// Why a batch did not finish.
#[derive(Debug)]
pub enum Stopped<E> {
    /// Item `index` was the first to fail; the others were stopped.
    Failed { index: usize, error: E },
    /// An item panicked; the others were stopped.
    Panicked(JoinError),
    /// The batch was halted from outside before all of its items ran.
    Cancelled,
}

/// A fixed number of workers shared by every batch that runs through it.
#[derive(Debug)]
pub struct Pool {
    workers: Arc<Semaphore>,
    size: usize,
}

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

impl Pool {
    /// A pool of `size` workers (at least one).
    pub fn new(size: usize) -> Pool {
        let size = size.max(1);
        Pool {
            workers: Arc::new(Semaphore::new(size)),
            size,
        }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Runs `work(0)` … `work(items - 1)`, each on a blocking thread once it
    /// holds one of the pool's workers, and returns their results in item
    /// order. The first item to fail (or panic) halts the batch: no further
    /// item starts, `halt` tells the running ones to stop, and that failure
    /// is returned. A batch halted from outside starts nothing more.
    /// Returns only once every item it started has ended, so nothing of the
    /// batch is left running; results of items that succeeded before a
    /// failure are dropped.
    pub async fn run<T, E, H, W>(&self, items: usize, halt: Arc<H>, work: W) -> Result<Vec<T>, Stopped<E>>
    where
        T: Send + 'static,
        E: Send + 'static,
        H: Halt,
        W: Fn(usize) -> Result<T, E> + Send + Sync + 'static,
    {
        let work = Arc::new(work);
        let mut done: Vec<Option<T>> = std::iter::repeat_with(|| None).take(items).collect();
        // An item hands its worker back through its result, so the batch
        // learns of a failure before that worker can start another of its items.
        let mut running: JoinSet<(usize, Result<T, E>, OwnedSemaphorePermit)> = JoinSet::new();
        let mut stopped: Option<Stopped<E>> = None;
        let mut next = 0;
        // Kept across turns of the loop, so the batch keeps its place in the queue for a worker.
        let mut waiting: Option<Acquire> = None;
        loop {
            let dispatching = stopped.is_none() && next < items && !halt.halted();
            if !dispatching {
                waiting = None;
                if running.is_empty() {
                    break;
                }
            } else if waiting.is_none() {
                waiting = Some(Box::pin(self.workers.clone().acquire_owned()));
            }
            let acquire = async {
                match waiting.as_mut() {
                    Some(w) => w.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                Some(joined) = running.join_next() => {
                    let failure = match joined {
                        Ok((i, Ok(t), _worker)) => {
                            if let Some(slot) = done.get_mut(i) {
                                *slot = Some(t);
                            }
                            None
                        }
                        Ok((index, Err(error), _worker)) => Some(Stopped::Failed { index, error }),
                        Err(e) => Some(Stopped::Panicked(e)),
                    };
                    if let (Some(f), None) = (failure, &stopped) {
                        stopped = Some(f);
                        halt.halt();
                    }
                }
                worker = acquire, if dispatching => {
                    waiting = None;
                    // The pool never closes its semaphore; should it, the batch stops as if cancelled.
                    let Ok(worker) = worker else {
                        stopped.get_or_insert(Stopped::Cancelled);
                        continue;
                    };
                    // Halted while waiting for the worker: hand it back unused.
                    if halt.halted() {
                        continue;
                    }
                    let i = next;
                    next += 1;
                    let work = work.clone();
                    running.spawn_blocking(move || (i, work(i), worker));
                }
                _ = tokio::time::sleep(TICK), if dispatching => {}
            }
        }
        if let Some(s) = stopped {
            return Err(s);
        }
        done.into_iter().collect::<Option<Vec<T>>>().ok_or(Stopped::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Instant;

    #[derive(Default)]
    struct Flags {
        cancel: AtomicBool,
        failed: AtomicBool,
    }

    impl Halt for Flags {
        fn halted(&self) -> bool {
            self.cancel.load(Ordering::SeqCst) || self.failed.load(Ordering::SeqCst)
        }
        fn halt(&self) {
            self.failed.store(true, Ordering::SeqCst);
        }
    }

    /// Counts how many items run at once, and the most that ever did.
    #[derive(Default)]
    struct Gauge {
        now: AtomicUsize,
        most: AtomicUsize,
        started: AtomicUsize,
    }

    impl Gauge {
        fn enter(&self) {
            self.started.fetch_add(1, Ordering::SeqCst);
            let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(n, Ordering::SeqCst);
        }
        fn leave(&self) {
            self.now.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits until `cond` holds, for at most 10 s.
    fn until(cond: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn results_come_in_item_order_and_no_more_than_the_pool_run_at_once() {
        for size in [1, 3] {
            let pool = Pool::new(size);
            let gauge = Arc::new(Gauge::default());
            let g = gauge.clone();
            let out = pool
                .run(10, Arc::new(Flags::default()), move |i| -> Result<usize, ()> {
                    g.enter();
                    // Later items finish first, so the order comes from the pool, not the timing.
                    std::thread::sleep(Duration::from_millis(30 - 2 * i as u64));
                    g.leave();
                    Ok(i * i)
                })
                .await;
            assert_eq!(out.ok(), Some((0..10).map(|i| i * i).collect::<Vec<_>>()), "size {size}");
            assert_eq!(gauge.most.load(Ordering::SeqCst), size, "size {size}");
        }
        assert_eq!(Pool::new(0).size(), 1);
        let empty = Pool::new(2).run(0, Arc::new(Flags::default()), |_| Err::<(), ()>(())).await;
        assert_eq!(empty.ok(), Some(vec![]));
    }

    /// Two batches at once together use at most the pool's workers, and both finish.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_share_the_workers() {
        let pool = Arc::new(Pool::new(2));
        let gauge = Arc::new(Gauge::default());
        let batch = |pool: Arc<Pool>, gauge: Arc<Gauge>| async move {
            pool.run(6, Arc::new(Flags::default()), move |i| -> Result<usize, ()> {
                gauge.enter();
                std::thread::sleep(Duration::from_millis(20));
                gauge.leave();
                Ok(i)
            })
            .await
        };
        let (a, b, c) = tokio::join!(
            batch(pool.clone(), gauge.clone()),
            batch(pool.clone(), gauge.clone()),
            batch(pool.clone(), gauge.clone())
        );
        for r in [a, b, c] {
            assert_eq!(r.ok(), Some((0..6).collect::<Vec<_>>()));
        }
        assert_eq!(gauge.started.load(Ordering::SeqCst), 18);
        assert_eq!(gauge.most.load(Ordering::SeqCst), 2);
    }

    /// The first failure is the batch's result: the running items are told
    /// to stop, no item starts after it, and the batch returns only once
    /// they all ended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_failure_stops_the_batch() {
        let pool = Pool::new(3);
        let flags = Arc::new(Flags::default());
        let gauge = Arc::new(Gauge::default());
        let (f, g) = (flags.clone(), gauge.clone());
        let out = pool
            .run(20, flags.clone(), move |i| -> Result<usize, String> {
                g.enter();
                let r = if i == 1 {
                    // Fails once the two others are running.
                    until(|| g.started.load(Ordering::SeqCst) >= 3);
                    Err(format!("item {i} is bad"))
                } else if until(|| f.halted()) {
                    Err(format!("item {i} stopped"))
                } else {
                    Ok(i)
                };
                g.leave();
                r
            })
            .await;
        match out {
            Err(Stopped::Failed { index, error }) => assert_eq!((index, error.as_str()), (1, "item 1 is bad")),
            other => panic!("{other:?}"),
        }
        assert!(flags.failed.load(Ordering::SeqCst));
        assert_eq!(gauge.started.load(Ordering::SeqCst), 3, "an item started after the failure");
        assert_eq!(gauge.now.load(Ordering::SeqCst), 0, "the batch returned while items ran");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_stops_the_batch() {
        let pool = Pool::new(2);
        let flags = Arc::new(Flags::default());
        let f = flags.clone();
        let out = pool
            .run(10, flags.clone(), move |i| -> Result<usize, ()> {
                if i == 0 {
                    panic!("item 0 panics");
                }
                until(|| f.halted());
                Ok(i)
            })
            .await;
        assert!(matches!(out, Err(Stopped::Panicked(ref e)) if e.is_panic()), "{out:?}");
        assert!(flags.failed.load(Ordering::SeqCst));
    }

    /// A batch cancelled from outside returns promptly: its running items
    /// see the signal, and the items that wait for a worker never start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_batch_stops_promptly() {
        let pool = Pool::new(2);
        let flags = Arc::new(Flags::default());
        let gauge = Arc::new(Gauge::default());
        let (f, g) = (flags.clone(), gauge.clone());
        let canceller = {
            let (flags, gauge) = (flags.clone(), gauge.clone());
            std::thread::spawn(move || {
                until(|| gauge.started.load(Ordering::SeqCst) == 2);
                flags.cancel.store(true, Ordering::SeqCst);
                Instant::now()
            })
        };
        let out = pool
            .run(10, flags.clone(), move |i| -> Result<usize, &'static str> {
                g.enter();
                let r = if until(|| f.halted()) { Err("cancelled") } else { Ok(i) };
                g.leave();
                r
            })
            .await;
        let returned = Instant::now();
        let cancelled_at = canceller.join().unwrap_or_else(|_| Instant::now());
        assert!(matches!(out, Err(Stopped::Failed { error: "cancelled", .. })), "{out:?}");
        assert!(returned.duration_since(cancelled_at) < Duration::from_secs(1));
        assert_eq!(gauge.started.load(Ordering::SeqCst), 2);
    }

    /// A batch that waits for a worker held by another batch stops waiting
    /// when it is cancelled, without starting anything.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_waiting_for_a_worker_can_be_cancelled() {
        let pool = Arc::new(Pool::new(1));
        let release = Arc::new(AtomicBool::new(false));
        let holding = Arc::new(AtomicBool::new(false));
        let first = {
            let (pool, release, holding) = (pool.clone(), release.clone(), holding.clone());
            tokio::spawn(async move {
                pool.run(1, Arc::new(Flags::default()), move |_| -> Result<(), ()> {
                    holding.store(true, Ordering::SeqCst);
                    until(|| release.load(Ordering::SeqCst));
                    Ok(())
                })
                .await
            })
        };
        let h = holding.clone();
        tokio::task::spawn_blocking(move || until(|| h.load(Ordering::SeqCst))).await.ok();
        let flags = Arc::new(Flags::default());
        let started = Arc::new(AtomicUsize::new(0));
        let second = {
            let (pool, flags, started) = (pool.clone(), flags.clone(), started.clone());
            tokio::spawn(async move {
                pool.run(3, flags, move |_| -> Result<(), ()> {
                    started.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "the second batch ran without a worker");
        flags.cancel.store(true, Ordering::SeqCst);
        let t = Instant::now();
        let out = second.await;
        assert!(t.elapsed() < Duration::from_secs(1));
        assert!(matches!(out, Ok(Err(Stopped::Cancelled))), "{out:?}");
        assert_eq!(started.load(Ordering::SeqCst), 0);
        release.store(true, Ordering::SeqCst);
        assert!(matches!(first.await, Ok(Ok(_))));
        // The worker came back: the pool serves the next batch.
        let again = pool.run(2, Arc::new(Flags::default()), Ok::<usize, ()>).await;
        assert_eq!(again.ok(), Some(vec![0, 1]));
    }
}
