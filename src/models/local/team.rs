//! A fixed team of threads for the fine-grained parallel loops of a decoding step: the calling thread and
//! `threads - 1` helpers share each loop's tasks.
//!
//! A decoding step runs about 150 parallel loops of 5-100 us each (matmuls, attention). On a work-stealing pool
//! an idle worker soon goes to sleep, and waking it again costs tens of microseconds on a virtual machine (the
//! idle vCPU has halted); measured on rayon, the second thread often joined a loop after the first had done most
//! of it, and a loop's end sometimes waited hundreds of microseconds for a sleeping thread. Here a helper spins
//! for [`SPIN`] after each loop, so through a step it is always awake, and parks only when the model is idle.
//! The caller works on the loop too, so starting one is an atomic store and no hand-over.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper keeps spinning for the next loop before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// The cursor's task part once a loop is over: at least any loop's task count.
const EXHAUSTED: u64 = 0xFFFF_FFFF;

/// A loop's body with its lifetime erased: valid while the loop that published it runs (see [`Team::run`]).
type Body = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// The current loop's generation (high 32 bits) and its next unclaimed task (low 32 bits). A task is claimed
    /// by a compare-exchange that keeps the generation, so a helper still holding a finished loop's body can
    /// never claim a task of the next loop.
    cursor: AtomicU64,
    /// Tasks in the current loop.
    tasks: AtomicUsize,
    /// Tasks of the current loop that have returned.
    done: AtomicUsize,
    body: Mutex<Option<SendBody>>,
    /// A task panicked in the current loop.
    panicked: AtomicBool,
    stop: AtomicBool,
    /// Threads in the team, the caller included.
    threads: usize,
    /// Helpers park at once instead of spinning (see [`Team::rest`]).
    resting: AtomicBool,
    /// Helpers parked on `wake`.
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendBody(Body);
// SAFETY: the body is `Sync`; the pointer is only dereferenced while the loop that owns it runs.
unsafe impl Send for SendBody {}

/// Threads that run parallel loops together with the thread that starts them.
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One loop at a time (callers on other threads wait here).
    running: Mutex<()>,
}

thread_local! {
    /// This thread is inside a loop's task: a nested loop runs inline.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Team {
    /// A team of `threads` (the caller counts as one), helpers named `{name}-1`, `{name}-2`, ...
    pub fn new(threads: usize, name: &str) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            cursor: AtomicU64::new(0),
            tasks: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            body: Mutex::new(None),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            threads: threads.max(1),
            resting: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let helpers = (1..threads.max(1))
            .map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || helper(&shared))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(Team { shared, helpers, running: Mutex::new(()) })
    }

    /// Threads that work on a loop, the caller included.
    pub fn threads(&self) -> usize {
        self.shared.threads
    }

    /// Runs `body(0)`, ..., `body(tasks - 1)`, each once, spread over the team; returns when all have returned.
    /// A panic in any task is raised here once every task has finished.
    pub fn run(&self, tasks: usize, body: impl Fn(usize) + Sync) {
        if tasks == 0 {
            return;
        }
        if self.shared.threads == 1 || tasks == 1 || IN_TASK.with(Cell::get) {
            (0..tasks).for_each(body);
            return;
        }
        assert!((tasks as u64) < EXHAUSTED, "a loop of {tasks} tasks");
        let _running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let shared = &*self.shared;
        let body: &(dyn Fn(usize) + Sync) = &body;
        // SAFETY: only the lifetime is erased. Helpers call the body only for tasks they claimed in this loop's
        // generation, and this function returns only after all of them are done, so no call outlives `body`.
        let erased: Body = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Body>(body) };
        *shared.body.lock().unwrap_or_else(|p| p.into_inner()) = Some(SendBody(erased));
        shared.tasks.store(tasks, Ordering::SeqCst);
        shared.done.store(0, Ordering::SeqCst);
        shared.panicked.store(false, Ordering::SeqCst);
        shared.resting.store(false, Ordering::SeqCst);
        // 32 bits of generation: at ~10,000 loops a second they wrap after days, and a helper only compares
        // the generation with the last one it saw.
        let generation = ((shared.cursor.load(Ordering::SeqCst) >> 32) + 1) & EXHAUSTED;
        // Publishing the new generation with task 0 next starts the loop.
        shared.cursor.store(generation << 32, Ordering::SeqCst);
        if shared.parked.load(Ordering::SeqCst) > 0 {
            let _lock = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            shared.wake.notify_all();
        }
        work(shared, generation, body);
        // Wait for tasks that helpers are still running.
        let started = Instant::now();
        let mut spins = 0u32;
        while shared.done.load(Ordering::Acquire) < tasks {
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || started.elapsed() < SPIN {
                std::hint::spin_loop();
            } else {
                // A helper was preempted: give it the CPU.
                std::thread::yield_now();
            }
        }
        // Mark the loop exhausted before the next one changes the task count: a helper that reads the next
        // count while this generation is still current then finds nothing to claim.
        shared.cursor.store(generation << 32 | EXHAUSTED, Ordering::SeqCst);
        if shared.panicked.load(Ordering::SeqCst) {
            resume_unwind(Box::new("a task of a parallel loop panicked"));
        }
    }

    /// Lets the helpers park now instead of spinning for the next loop: other threads (another library's pool)
    /// are about to need the CPUs. The next loop wakes them.
    pub fn rest(&self) {
        self.shared.resting.store(true, Ordering::SeqCst);
    }

    /// Runs `body(i, chunk)` for each `chunk`-long piece of `data` (the last may be shorter), spread over the team.
    pub fn for_each_chunk_mut<T: Send>(&self, data: &mut [T], chunk: usize, body: impl Fn(usize, &mut [T]) + Sync) {
        assert!(chunk > 0);
        let (len, base) = (data.len(), SendPtr(data.as_mut_ptr()));
        self.run(len.div_ceil(chunk), |i| {
            let start = i * chunk;
            let count = chunk.min(len - start);
            // SAFETY: task `i` alone touches elements `start..start + count`, which lie inside `data`, borrowed
            // mutably for the whole loop.
            let piece = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), count) };
            body(i, piece);
        });
    }
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to hand disjoint pieces of one slice to the tasks of a loop.
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _lock = self.shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.shared.wake.notify_all();
        }
        for helper in self.helpers.drain(..) {
            let _ = helper.join();
        }
    }
}

/// Claims and runs tasks of loop `generation` until none are left.
fn work(shared: &Shared, generation: u64, body: &(dyn Fn(usize) + Sync)) {
    let tasks = shared.tasks.load(Ordering::SeqCst) as u64;
    // Tasks taken per claim: each claim moves the cursor's cache line between cores, which for a loop of
    // thousands of short tasks (attention over many sequences) adds up; a few claims per thread keep the load
    // balanced.
    let grain = (tasks / (shared.threads as u64 * 8)).max(1);
    let mut cursor = shared.cursor.load(Ordering::SeqCst);
    loop {
        if cursor >> 32 != generation || cursor & EXHAUSTED >= tasks {
            return;
        }
        let end = ((cursor & EXHAUSTED) + grain).min(tasks);
        match shared.cursor.compare_exchange_weak(cursor, generation << 32 | end, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {
                let claimed = (cursor & EXHAUSTED) as usize..end as usize;
                let count = claimed.len();
                IN_TASK.with(|t| t.set(true));
                for task in claimed {
                    if catch_unwind(AssertUnwindSafe(|| body(task))).is_err() {
                        shared.panicked.store(true, Ordering::SeqCst);
                    }
                }
                IN_TASK.with(|t| t.set(false));
                shared.done.fetch_add(count, Ordering::Release);
                cursor = shared.cursor.load(Ordering::SeqCst);
            }
            Err(now) => cursor = now,
        }
    }
}

fn helper(shared: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a new generation: spin a while, then park.
        let started = Instant::now();
        let mut spins = 0u32;
        let generation = loop {
            let generation = shared.cursor.load(Ordering::SeqCst) >> 32;
            if generation != seen || shared.stop.load(Ordering::SeqCst) {
                break generation;
            }
            // A `pause` takes about 140 cycles on recent Intel cores: a few between looks keep the start of a
            // loop within a fraction of a microsecond, and the clock is read only now and then.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) || (started.elapsed() < SPIN && !shared.resting.load(Ordering::Relaxed)) {
                for _ in 0..4 {
                    std::hint::spin_loop();
                }
                continue;
            }
            let mut lock = shared.lock.lock().unwrap_or_else(|p| p.into_inner());
            shared.parked.fetch_add(1, Ordering::SeqCst);
            while shared.cursor.load(Ordering::SeqCst) >> 32 == seen && !shared.stop.load(Ordering::SeqCst) {
                lock = shared.wake.wait(lock).unwrap_or_else(|p| p.into_inner());
            }
            shared.parked.fetch_sub(1, Ordering::SeqCst);
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        seen = generation;
        let Some(SendBody(body)) = *shared.body.lock().unwrap_or_else(|p| p.into_inner()) else { continue };
        // SAFETY: the body stays valid while loop `generation` runs, and `work` calls it only for tasks claimed
        // in that generation (see `Team::run`); it may have been replaced by a later loop's body, in which case
        // the generation no longer matches and nothing is claimed.
        work(shared, generation, unsafe { &*body });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A loop of 100 tasks on `team` runs each of them.
    fn assert_runs_a_loop(team: &Team) {
        let sum = AtomicUsize::new(0);
        team.run(100, |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 4950);
    }

    #[test]
    fn every_task_runs_exactly_once_on_any_team_size() {
        for threads in [1, 2, 3, 8] {
            let team = Team::new(threads, "test").unwrap();
            for tasks in [0, 1, 2, 7, 100, 1000] {
                let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                team.run(tasks, |i| {
                    counts[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1), "{threads} threads, {tasks} tasks");
            }
        }
    }

    #[test]
    fn helpers_take_part_in_a_loop() {
        let team = Team::new(2, "test").unwrap();
        let caller = std::thread::current().id();
        let others = AtomicUsize::new(0);
        // Tasks long enough that the helper (spinning or woken) gets some of them.
        for _ in 0..20 {
            team.run(64, |_| {
                if std::thread::current().id() != caller {
                    others.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200));
            });
        }
        assert!(others.load(Ordering::Relaxed) > 0);
    }

    #[test]
    fn resting_helpers_park_and_wake_for_the_next_loop() {
        let team = Team::new(3, "test").unwrap();
        team.run(10, |_| ());
        team.rest();
        let started = Instant::now();
        while team.shared.parked.load(Ordering::SeqCst) < 2 {
            assert!(started.elapsed() < Duration::from_secs(10), "the helpers never parked");
            std::thread::yield_now();
        }
        assert_runs_a_loop(&team);
    }

    #[test]
    fn chunks_cover_the_slice_once_and_the_last_is_short() {
        let team = Team::new(3, "test").unwrap();
        let mut data = vec![0usize; 1003];
        team.for_each_chunk_mut(&mut data, 10, |i, chunk| {
            assert!(chunk.len() == 10 || (i == 100 && chunk.len() == 3));
            chunk.iter_mut().for_each(|v| *v += i + 1);
        });
        assert!(data.iter().enumerate().all(|(k, &v)| v == k / 10 + 1));
    }

    #[test]
    fn loops_after_the_helpers_parked_still_run() {
        let team = Team::new(2, "test").unwrap();
        std::thread::sleep(SPIN * 4);
        assert_runs_a_loop(&team);
    }

    #[test]
    fn a_nested_loop_runs_inline_and_callers_on_several_threads_take_turns() {
        let team = Team::new(2, "test").unwrap();
        let total = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    for _ in 0..50 {
                        team.run(8, |_| {
                            team.run(4, |_| {
                                total.fetch_add(1, Ordering::Relaxed);
                            })
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 3 * 50 * 8 * 4);
    }

    #[test]
    fn a_panicking_task_is_raised_after_the_others_finish_and_the_team_still_works() {
        let team = Team::new(2, "test").unwrap();
        let finished = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            team.run(50, |i| {
                if i == 7 {
                    panic!("task 7");
                }
                finished.fetch_add(1, Ordering::Relaxed);
            })
        }));
        assert!(result.is_err());
        assert_eq!(finished.load(Ordering::Relaxed), 49);
        assert_runs_a_loop(&team);
    }
}
