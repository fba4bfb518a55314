//! Admission control for one endpoint: an adaptive concurrency limit (AIMD), optional RPM/TPM token
//! buckets, and a circuit breaker that pauses all calls while the endpoint fails persistently.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{Semaphore, SemaphorePermit};

/// Consecutive failed attempts that open the breaker.
const BREAKER_THRESHOLD: u32 = 16;
/// How long an open breaker holds calls back before letting them try again.
const BREAKER_COOLDOWN: Duration = Duration::from_secs(2);
/// Decreases closer together than this count as one overload (a burst of 429s is one signal).
const DECREASE_SPACING: Duration = Duration::from_millis(250);

/// Concurrency that backs off multiplicatively on overload (429, timeouts) and ramps up by one per
/// `limit` successes, between 1 and the configured maximum.
pub struct AdaptiveLimit {
    semaphore: Semaphore,
    max: usize,
    current: AtomicUsize,
    /// Permits to retire as they come back, after a decrease.
    debt: AtomicUsize,
    successes: AtomicUsize,
    lowest: AtomicUsize,
    last_decrease: Mutex<Option<Instant>>,
}

impl AdaptiveLimit {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        AdaptiveLimit {
            semaphore: Semaphore::new(max),
            max,
            current: AtomicUsize::new(max),
            debt: AtomicUsize::new(0),
            successes: AtomicUsize::new(0),
            lowest: AtomicUsize::new(max),
            last_decrease: Mutex::new(None),
        }
    }

    /// Waits for a slot. Dropping the returned guard gives it back (or retires it, after a decrease).
    pub async fn acquire(&self) -> Result<Slot<'_>, String> {
        let permit = self.semaphore.acquire().await.map_err(|e| e.to_string())?;
        Ok(Slot { limit: self, permit: Some(permit) })
    }

    /// The limit now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The lowest limit reached so far.
    pub fn lowest(&self) -> usize {
        self.lowest.load(Ordering::Relaxed)
    }

    /// The endpoint is overloaded: cut the limit to three quarters.
    pub fn overloaded(&self) {
        let Ok(mut last) = self.last_decrease.lock() else { return };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < DECREASE_SPACING) {
            return;
        }
        *last = Some(now);
        let current = self.current();
        let lower = (current * 3 / 4).max(1);
        if lower < current {
            self.current.store(lower, Ordering::Relaxed);
            self.debt.fetch_add(current - lower, Ordering::Relaxed);
            self.lowest.fetch_min(lower, Ordering::Relaxed);
        }
        self.successes.store(0, Ordering::Relaxed);
    }

    /// A call succeeded: after `limit` successes in a row, allow one more call in flight.
    pub fn succeeded(&self) {
        let current = self.current();
        if current >= self.max {
            return;
        }
        if self.successes.fetch_add(1, Ordering::Relaxed) + 1 >= current {
            self.successes.store(0, Ordering::Relaxed);
            self.current.fetch_add(1, Ordering::Relaxed);
            // Cancel a pending retirement before minting a new permit.
            let cancelled = self.debt.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1)).is_ok();
            if !cancelled {
                self.semaphore.add_permits(1);
            }
        }
    }
}

/// A call slot of an [`AdaptiveLimit`].
pub struct Slot<'a> {
    limit: &'a AdaptiveLimit,
    permit: Option<SemaphorePermit<'a>>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let retire =
                self.limit.debt.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1)).is_ok();
            if retire {
                permit.forget();
            }
        }
    }
}

/// Pauses every call after a run of consecutive failures, then lets calls try again.
#[derive(Default)]
pub struct CircuitBreaker {
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which calls wait; 0 when closed.
    open_until_ms: AtomicU64,
    opened: AtomicU64,
    epoch: Mutex<Option<Instant>>,
}

impl CircuitBreaker {
    fn now_ms(&self) -> u64 {
        let Ok(mut epoch) = self.epoch.lock() else { return 0 };
        let start = *epoch.get_or_insert_with(Instant::now);
        start.elapsed().as_millis() as u64 + 1
    }

    /// How long a call must wait before it may be sent (zero when closed).
    pub fn wait(&self) -> Duration {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(until.saturating_sub(self.now_ms()))
    }

    pub fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.open_until_ms.store(0, Ordering::Relaxed);
    }

    pub fn failed(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= BREAKER_THRESHOLD && self.wait().is_zero() {
            self.open_until_ms.store(self.now_ms() + BREAKER_COOLDOWN.as_millis() as u64, Ordering::Relaxed);
            self.opened.fetch_add(1, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(cooldown_s = BREAKER_COOLDOWN.as_secs_f64(), "endpoint keeps failing; pausing calls");
        }
    }

    /// Times the breaker opened.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

/// `n` per minute, with bursts of one second's worth (not a whole minute's) so calls are spread out.
fn per_minute_smooth(n: NonZeroU32) -> Quota {
    let burst = NonZeroU32::new((n.get() / 60).max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_minute(n).allow_burst(burst)
}

/// Requests-per-minute and tokens-per-minute buckets (each optional).
pub struct RateBudget {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<(DefaultDirectRateLimiter, u32)>,
}

impl RateBudget {
    pub fn new(rpm: Option<u32>, tpm: Option<u32>) -> Self {
        RateBudget {
            requests: rpm.and_then(NonZeroU32::new).map(|n| RateLimiter::direct(per_minute_smooth(n))),
            tokens: tpm.and_then(NonZeroU32::new).map(|n| {
                let quota = per_minute_smooth(n);
                (RateLimiter::direct(quota), quota.burst_size().get())
            }),
        }
    }

    /// Waits until one request of about `tokens` tokens fits both budgets.
    pub async fn admit(&self, tokens: u32) {
        if let Some(limiter) = &self.requests {
            limiter.until_ready().await;
        }
        if let Some((limiter, capacity)) = &self.tokens {
            // A request larger than a whole minute's budget waits for the full bucket instead.
            let n = NonZeroU32::new(tokens.clamp(1, *capacity)).unwrap_or(NonZeroU32::MIN);
            let _ = limiter.until_n_ready(n).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_limit_shrinks_on_overload_and_grows_back_with_successes() {
        let limit = AdaptiveLimit::new(8);
        limit.overloaded();
        assert_eq!(limit.current(), 6);
        limit.overloaded();
        assert_eq!(limit.current(), 6, "a burst of overload signals counts once");
        // The first two slots given back are retired, paying the debt.
        drop((limit.acquire().await.unwrap(), limit.acquire().await.unwrap()));
        let mut held = Vec::new();
        for _ in 0..6 {
            held.push(limit.acquire().await.unwrap());
        }
        assert!(limit.semaphore.try_acquire().is_err(), "no seventh call in flight");
        drop(held);
        assert_eq!(limit.semaphore.available_permits(), 6);
        for _ in 0..6 {
            limit.succeeded();
        }
        assert_eq!(limit.current(), 7, "one more after a full window of successes");
        assert_eq!(limit.semaphore.available_permits(), 7);
        assert_eq!(limit.lowest(), 6);
    }

    #[test]
    fn the_breaker_opens_after_a_run_of_failures_and_closes_on_success() {
        let breaker = CircuitBreaker::default();
        for _ in 0..BREAKER_THRESHOLD - 1 {
            breaker.failed();
        }
        assert!(breaker.wait().is_zero());
        breaker.failed();
        assert!(breaker.wait() > Duration::from_millis(1000));
        assert_eq!(breaker.opened(), 1);
        breaker.succeeded();
        assert!(breaker.wait().is_zero());
    }

    #[tokio::test]
    async fn the_request_budget_spaces_calls() {
        // 600 per minute with a burst of one second's worth (10): 15 calls need about half a second.
        let budget = RateBudget::new(Some(600), None);
        let started = Instant::now();
        for _ in 0..15 {
            budget.admit(1).await;
        }
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
        // A request larger than the bucket is clamped to it, not refused forever.
        let tokens = RateBudget::new(None, Some(6000));
        tokens.admit(1_000_000).await;
    }
}
