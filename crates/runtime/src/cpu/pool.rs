//! A small persistent thread pool for the CPU matrix products.
//!
//! A decode step multiplies ~200 small matrices; waking sleeping threads for each (tens of µs
//! on Linux) would cost as much as the products themselves. The workers therefore spin for a
//! short while after each job ([`SPIN`]) before they sleep on a condition variable, as
//! llama.cpp's threads do. The calling thread takes part in every job. When another thread
//! already drives the pool (two stages decoding in one process), the job runs on the caller
//! alone rather than waiting.

use std::cell::UnsafeCell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
const SPIN: Duration = Duration::from_millis(2);

/// The job being run: `f(task)` for every task index below `tasks`.
type JobRef = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per job; a worker runs a job when it sees a new value.
    epoch: AtomicU64,
    /// The job of the current epoch (written only while no worker reads it, see [`Pool::run`]).
    job: UnsafeCell<Option<JobRef>>,
    tasks: AtomicUsize,
    /// Next task index to claim.
    next: AtomicUsize,
    /// Workers that have not finished the current epoch.
    pending: AtomicUsize,
    /// Workers asleep (or about to be) on `wake`.
    sleeping: AtomicUsize,
    /// A task of the current job panicked on a worker.
    panicked: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written by the one thread holding `Pool::driver`, while every worker is
// between epochs (`pending == 0`), and read by workers only after they saw the new epoch (SeqCst
// publication). The closure it points to is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    /// Held by the thread running a job.
    driver: Mutex<()>,
}

/// The process's pool: one thread per core candle would use (`RAYON_NUM_THREADS` or all
/// cores), the caller included.
pub fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(candle_core::utils::get_num_threads()))
}

impl Pool {
    /// A pool in which `threads` threads (the caller and `threads - 1` workers) run each job.
    pub fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            sleeping: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = threads.max(1) - 1;
        for i in 0..workers {
            let s = shared.clone();
            // A pool without its workers still runs every job (on the caller), so a failed
            // spawn only costs speed.
            if std::thread::Builder::new()
                .name(format!("edge-eval-matmul-{i}"))
                .spawn(move || worker(&s))
                .is_err()
            {
                return Pool {
                    shared,
                    workers: i,
                    driver: Mutex::new(()),
                };
            }
        }
        Pool {
            shared,
            workers,
            driver: Mutex::new(()),
        }
    }

    /// Threads that run a job (workers and the caller).
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(0) … f(tasks - 1)` spread over the pool; returns when all have run. A panic in a
    /// task is raised here once every thread has left the job (never while a worker may still
    /// hold `f`).
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let guard = match self.driver.try_lock() {
            Ok(g) if self.workers > 0 && tasks > 1 => g,
            _ => {
                (0..tasks).for_each(f);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: lifetime erased for the workers; `run` does not return before every worker
        // has left this epoch (`pending == 0`), so the pointer never outlives `f`.
        let job: JobRef = unsafe { std::mem::transmute::<_, JobRef>(f) };
        // SAFETY: no worker reads `job` now: the previous epoch ended with `pending == 0`.
        unsafe { *s.job.get() = Some(job) };
        s.tasks.store(tasks, SeqCst);
        s.next.store(0, SeqCst);
        s.pending.store(self.workers, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleeping.load(SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim(s, f)));
        let mut spins = 0u32;
        while s.pending.load(SeqCst) > 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let theirs = s.panicked.swap(false, SeqCst);
        drop(guard);
        if let Err(e) = mine {
            resume_unwind(e);
        }
        if theirs {
            panic!("a CPU matmul task panicked on a pool thread");
        }
    }
}

/// Runs tasks of the current job until none is left.
fn claim(s: &Shared, f: &(dyn Fn(usize) + Sync)) {
    let tasks = s.tasks.load(SeqCst);
    loop {
        let t = s.next.fetch_add(1, SeqCst);
        if t >= tasks {
            break;
        }
        f(t);
    }
}

fn worker(s: &Shared) {
    // Epoch 0 is the pool's state before its first job (not whatever the epoch is when this
    // thread starts: a job may already be waiting for it).
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        while s.epoch.load(SeqCst) == seen {
            spins = spins.wrapping_add(1);
            std::hint::spin_loop();
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN {
                let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, SeqCst);
                while s.epoch.load(SeqCst) == seen {
                    l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, SeqCst);
            }
        }
        seen = s.epoch.load(SeqCst);
        // SAFETY: the driver wrote `job` before bumping the epoch and keeps the closure alive
        // until this worker decrements `pending`.
        if let Some(job) = unsafe { *s.job.get() }
            && catch_unwind(AssertUnwindSafe(|| claim(s, unsafe { &*job }))).is_err()
        {
            s.panicked.store(true, SeqCst);
        }
        s.pending.fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        let pool = Pool::new(3);
        assert_eq!(pool.threads(), 3);
        for tasks in [0, 1, 2, 7, 1000] {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.run(tasks, &|t| {
                hits[t].fetch_add(1, SeqCst);
            });
            assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "{tasks} tasks");
        }
    }

    #[test]
    fn sleeping_workers_wake_for_the_next_job() {
        let pool = Pool::new(2);
        let ran_on = Mutex::new(std::collections::HashSet::new());
        std::thread::sleep(SPIN * 5);
        pool.run(64, &|_| {
            std::thread::sleep(Duration::from_millis(1));
            ran_on.lock().unwrap().insert(std::thread::current().id());
        });
        assert_eq!(ran_on.lock().unwrap().len(), 2, "both threads took tasks");
    }

    #[test]
    fn a_panicking_task_is_raised_to_the_caller_and_the_pool_goes_on() {
        let pool = Pool::new(2);
        for _ in 0..20 {
            let r = catch_unwind(AssertUnwindSafe(|| {
                pool.run(8, &|t| {
                    std::thread::sleep(Duration::from_micros(200));
                    assert!(t != 5, "task 5 fails");
                })
            }));
            assert!(r.is_err());
        }
        let done = AtomicUsize::new(0);
        pool.run(8, &|_| {
            done.fetch_add(1, SeqCst);
        });
        assert_eq!(done.load(SeqCst), 8);
    }

    #[test]
    fn a_busy_pool_runs_a_second_caller_alone() {
        let pool = Arc::new(Pool::new(2));
        let total = AtomicUsize::new(0);
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    for _ in 0..50 {
                        pool.run(16, &|t| {
                            total.fetch_add(t, SeqCst);
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(SeqCst), 4 * 50 * (0..16).sum::<usize>());
    }
}
