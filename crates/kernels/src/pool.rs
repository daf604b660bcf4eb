//! A persistent thread pool for data-parallel kernels.
//!
//! One engine step issues hundreds of small parallel jobs (a matmul, an
//! attention pass), so dispatch must cost well under a microsecond: workers
//! spin on a generation counter for a while before parking, and the calling
//! thread takes part in every job (with N threads there are N-1 workers).
//!
//! Workers *join* a job; once the caller has finished its own part it closes
//! the job and waits only for the workers that joined. Jobs hand out their
//! work from shared counters, so a worker the OS has not scheduled (a busy
//! shared machine) costs nothing: the caller and the others take its share.
//! With fixed per-thread shares, one descheduled worker would stall every
//! job for a whole time slice.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};

/// How many spins a worker waits for the next job before parking.
const SPIN_BEFORE_PARK: u32 = 20_000;

type Job = dyn Fn(usize, usize) + Sync;

/// `Shared::slot`: the job's generation in the high 32 bits, this flag,
/// and the number of workers inside the job in the low bits.
const CLOSED: u64 = 1 << 31;
const ACTIVE: u64 = CLOSED - 1;

struct Shared {
    /// Lifetime-erased pointer to the current job; valid while `run` waits.
    job: UnsafeCell<Option<*const Job>>,
    generation: AtomicU64,
    /// Generation, [`CLOSED`] and the count of workers that joined.
    slot: AtomicU64,
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
            slot: AtomicU64::new(CLOSED),
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

    /// Runs `f(thread_index, n_threads)` on the calling thread (index 0)
    /// and on every worker that joins before the caller's own call returns,
    /// and returns when all of those have finished. `f` must take its work
    /// from a shared counter (as [`ThreadPool::for_ranges`] does), never by
    /// a fixed share per thread index: a worker may not run at all. Panics
    /// in `f` are re-raised here.
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
        // SAFETY: no worker reads `job` until it has joined the new
        // generation, which is published below.
        unsafe { *s.job.get() = Some(job) };
        let g = s.generation.fetch_add(1, Ordering::SeqCst) + 1;
        s.slot.store((g & 0xFFFF_FFFF) << 32, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            for (_, t) in &self.workers {
                t.unpark();
            }
        }
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0, n)));
        // No one joins from now on; wait for those inside. Spin briefly, then
        // yield: on an oversubscribed machine a worker may be waiting for
        // this very core.
        s.slot.fetch_or(CLOSED, Ordering::SeqCst);
        let mut spins = 0u32;
        while s.slot.load(Ordering::Acquire) & ACTIVE != 0 {
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
        if !join(s, seen) {
            continue; // closed already: the others did the work
        }
        // SAFETY: we joined generation `seen`, published after `job` was
        // set; `run` keeps the job alive until every joined worker leaves.
        if let Some(job) = unsafe { *s.job.get() } {
            let n = s.n_threads.load(Ordering::Relaxed);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
                (*job)(idx, n)
            }));
            if r.is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.slot.fetch_sub(1, Ordering::Release);
    }
}

/// Enters the job of generation `g` if it is still open.
fn join(s: &Shared, g: u64) -> bool {
    let mut cur = s.slot.load(Ordering::Acquire);
    loop {
        if cur >> 32 != g & 0xFFFF_FFFF || cur & CLOSED != 0 {
            return false;
        }
        match s
            .slot
            .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => return true,
            Err(now) => cur = now,
        }
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
    fn each_thread_runs_at_most_once_per_job_and_all_work_is_done() {
        let pool = ThreadPool::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            let done = AtomicUsize::new(0);
            pool.for_ranges(1000, 7, |r| {
                done.fetch_add(r.len(), Ordering::SeqCst);
            });
            pool.run(|i, n| {
                assert_eq!(n, pool.n_threads());
                hits[i].fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(hits[0].load(Ordering::SeqCst), 1, "the caller always runs");
            assert!(hits.iter().all(|h| h.load(Ordering::SeqCst) <= 1));
            assert_eq!(done.load(Ordering::SeqCst), 1000);
        }
    }

    #[test]
    fn late_workers_cannot_join_a_closed_job() {
        let s = Shared {
            job: UnsafeCell::new(None),
            generation: AtomicU64::new(7),
            slot: AtomicU64::new(7 << 32),
            sleepers: AtomicUsize::new(0),
            quit: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            n_threads: AtomicUsize::new(3),
        };
        assert!(join(&s, 7), "an open job takes a worker");
        assert_eq!(s.slot.load(Ordering::SeqCst) & ACTIVE, 1);
        assert!(!join(&s, 6), "a worker that saw an older job stays out");
        s.slot.fetch_or(CLOSED, Ordering::SeqCst);
        assert!(!join(&s, 7), "once the caller closes the job, no one joins");
        // The caller waits only for the one inside.
        s.slot.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(s.slot.load(Ordering::SeqCst) & ACTIVE, 0);
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
        // The caller waits (boundedly) for the worker to join, so the parked
        // worker must wake up and run.
        let joined = AtomicUsize::new(0);
        pool.run(|i, _| {
            if i == 0 {
                let t = std::time::Instant::now();
                while joined.load(Ordering::SeqCst) == 0 && t.elapsed().as_secs() < 10 {
                    std::hint::spin_loop();
                }
            } else {
                joined.fetch_add(1, Ordering::SeqCst);
            }
        });
        assert_eq!(joined.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn worker_panic_is_reported() {
        let pool = ThreadPool::new(2);
        let entered = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(|i, _| {
                if i == 1 {
                    entered.fetch_add(1, Ordering::SeqCst);
                    panic!("boom");
                }
                // Keep the job open until the worker is in.
                let t = std::time::Instant::now();
                while entered.load(Ordering::SeqCst) == 0 && t.elapsed().as_secs() < 10 {
                    std::hint::spin_loop();
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let hits = AtomicUsize::new(0);
        pool.for_ranges(100, 1, |r| {
            hits.fetch_add(r.len(), Ordering::SeqCst);
        });
        assert_eq!(hits.load(Ordering::SeqCst), 100);
    }
}
