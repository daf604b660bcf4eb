//! A persistent thread pool for data-parallel kernels.
//!
//! One engine step issues hundreds of small parallel jobs (a matmul, an
//! attention pass), so dispatch must cost well under a microsecond: workers
//! spin on a generation counter for a while before parking, and the calling
//! thread takes part in every job (with N threads there are N-1 workers).

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};

/// How many spins a worker waits for the next job before parking.
const SPIN_BEFORE_PARK: u32 = 20_000;

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// Lifetime-erased pointer to the current job; valid while `run` waits.
    job: UnsafeCell<Option<*const Job>>,
    generation: AtomicU64,
    remaining: AtomicUsize,
    sleepers: AtomicUsize,
    quit: AtomicBool,
    panicked: AtomicBool,
    n_threads: AtomicUsize,
}

// SAFETY: `job` is written only by the thread holding `ThreadPool::lock`
// before it publishes a new generation (SeqCst), and read by workers only
// after they observe that generation; `run` waits for every worker to finish
// before returning, so the pointee outlives all reads.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

/// A fixed set of threads that run one data-parallel job at a time.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<(JoinHandle<()>, Thread)>,
    lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool with `n_threads` threads in all (the caller counts as one).
    pub fn new(n_threads: usize) -> Self {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            generation: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            quit: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            n_threads: AtomicUsize::new(n_threads),
        });
        let mut workers = Vec::with_capacity(n_threads - 1);
        for idx in 1..n_threads {
            let s = Arc::clone(&shared);
            let spawned = thread::Builder::new()
                .name(format!("troupe-worker-{idx}"))
                .spawn(move || worker_loop(&s, idx));
            match spawned {
                Ok(h) => {
                    let t = h.thread().clone();
                    workers.push((h, t));
                }
                // Fewer threads than asked is still correct: jobs are split
                // by the number of threads that really exist.
                Err(_) => break,
            }
        }
        shared.n_threads.store(workers.len() + 1, Ordering::SeqCst);
        ThreadPool {
            shared,
            workers,
            lock: Mutex::new(()),
        }
    }

    /// A pool sized by `TROUPE_THREADS` or the number of available cores.
    pub fn with_default_threads() -> Self {
        Self::new(default_threads())
    }

    /// Number of threads that take part in each job.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `f(thread_index, n_threads)` once on every thread and returns
    /// when all have finished. Panics in `f` are re-raised here.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let n = self.n_threads();
        if n == 1 {
            f(0, 1);
            return;
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let job: &(dyn Fn(usize, usize) + Sync) = &f;
        // SAFETY: erase the lifetime; we wait below until no worker can
        // still be using it.
        let job: *const Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), &'static Job>(job) };
        let s = &*self.shared;
        // SAFETY: no worker reads `job` until it sees the new generation.
        unsafe { *s.job.get() = Some(job) };
        s.remaining.store(n - 1, Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            for (_, t) in &self.workers {
                t.unpark();
            }
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0, n)));
        // Spin briefly, then yield: on an oversubscribed machine a worker may
        // be waiting for this very core.
        let mut spins = 0u32;
        while s.remaining.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < SPIN_BEFORE_PARK {
                std::hint::spin_loop();
            } else {
                thread::yield_now();
            }
        }
        // SAFETY: all workers are done with the job.
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a thread-pool worker panicked");
        }
    }

    /// Runs `f` over `0..n_items` in ranges whose boundaries are multiples
    /// of `align`. Threads take ranges from a shared counter (about four per
    /// thread), so a thread the OS delays (a busy shared machine) just takes
    /// fewer instead of holding everyone up. `f` must not depend on which
    /// thread runs a range.
    pub fn for_ranges<F: Fn(std::ops::Range<usize>) + Sync>(
        &self,
        n_items: usize,
        align: usize,
        f: F,
    ) {
        let align = align.max(1);
        let n = self.n_threads();
        if n == 1 {
            if n_items > 0 {
                f(0..n_items);
            }
            return;
        }
        let per = n_items.div_ceil(align).div_ceil(n * 4).max(1) * align;
        let next = std::sync::atomic::AtomicUsize::new(0);
        self.run(|_, _| loop {
            let start = next.fetch_add(per, Ordering::Relaxed);
            if start >= n_items {
                break;
            }
            f(start..(start + per).min(n_items));
        });
    }
}

/// The `i`-th of `n` near-equal ranges covering `0..n_items`, with every
/// boundary a multiple of `align`.
pub fn split_range(n_items: usize, align: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    let chunks = n_items.div_ceil(align);
    let start = (chunks * i / n * align).min(n_items);
    let end = (chunks * (i + 1) / n * align).min(n_items);
    start..end
}

/// A slice that several pool threads write to at disjoint indices.
///
/// The pool's jobs split outputs by row ranges; this type carries the
/// pointer across threads. Callers promise that no two threads touch the
/// same element while a job runs.
pub struct UnsafeSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [T]>,
}

// SAFETY: access is only through the unsafe methods below, whose callers
// guarantee disjointness.
unsafe impl<T: Send> Send for UnsafeSlice<'_, T> {}
unsafe impl<T: Send> Sync for UnsafeSlice<'_, T> {}

impl<'a, T> UnsafeSlice<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        UnsafeSlice {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _life: std::marker::PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// # Safety
    /// `i < len`, and no other thread accesses element `i` concurrently.
    #[inline]
    pub unsafe fn write(&self, i: usize, v: T) {
        debug_assert!(i < self.len);
        // SAFETY: guaranteed by the caller.
        unsafe { self.ptr.add(i).write(v) }
    }

    /// # Safety
    /// `range` lies within the slice and no other thread accesses it
    /// concurrently.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, range: std::ops::Range<usize>) -> &mut [T] {
        debug_assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: guaranteed by the caller.
        unsafe {
            std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.end - range.start)
        }
    }
}

/// `TROUPE_THREADS` if set and valid, else the available parallelism.
pub fn default_threads() -> usize {
    std::env::var("TROUPE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| {
            thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn worker_loop(s: &Shared, idx: usize) {
    // Start from the pool's first generation, not the current one: a job
    // published before this thread got scheduled must still be run by it.
    let mut seen = 0;
    loop {
        let mut spins = 0u32;
        loop {
            if s.quit.load(Ordering::Relaxed) {
                return;
            }
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            spins += 1;
            if spins < SPIN_BEFORE_PARK {
                std::hint::spin_loop();
            } else {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen && !s.quit.load(Ordering::SeqCst) {
                    thread::park();
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                spins = 0;
            }
        }
        // SAFETY: the generation we saw was published after `job` was set,
        // and `run` keeps the job alive until `remaining` reaches zero.
        if let Some(job) = unsafe { *s.job.get() } {
            let n = s.n_threads.load(Ordering::Relaxed);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                (*job)(idx, n)
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.remaining.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.quit.store(true, Ordering::SeqCst);
        for (h, t) in self.workers.drain(..) {
            t.unpark();
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_once_per_job() {
        let pool = ThreadPool::new(3);
        for _ in 0..1000 {
            let hits = AtomicUsize::new(0);
            pool.run(|_, n| {
                assert_eq!(n, pool.n_threads());
                hits.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(hits.load(Ordering::SeqCst), pool.n_threads());
        }
    }

    #[test]
    fn ranges_cover_everything_once() {
        for n_items in [0, 1, 5, 64, 100, 1000] {
            for n in 1..5 {
                let mut covered = vec![0u8; n_items];
                for i in 0..n {
                    for j in split_range(n_items, 4, i, n) {
                        covered[j] += 1;
                    }
                }
                assert!(covered.iter().all(|&c| c == 1), "{n_items} {n}");
            }
        }
    }

    #[test]
    fn wakes_after_parking() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let hits = AtomicUsize::new(0);
        pool.run(|_, _| {
            hits.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn worker_panic_is_reported() {
        let pool = ThreadPool::new(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(|i, _| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let hits = AtomicUsize::new(0);
        pool.run(|_, _| {
            hits.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}
