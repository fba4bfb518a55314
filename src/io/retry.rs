//! The one retry policy for HTTP calls (model endpoints, Hub reads, Hub pushes, model downloads):
//!
//! - [`classify`] sorts an outcome into success, worth another try (transport errors, timeouts and the
//!   caller's [`RetryStatuses`]), refused credentials (401, 403) or final;
//! - [`Retrier::delay`] is the wait before the next try: exponential from `base_delay`, capped at
//!   `max_delay`, optionally jittered, or what the server's `Retry-After` asked (capped too);
//! - [`Retrier::run`] is the loop itself: tries, waits and gives up after `attempts`.
//!
//! Callers differ only in parameters (attempts, delays, statuses, jitter, the `Retry-After` cap), never
//! in a loop of their own.

use std::future::Future;
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// How often and how patiently a failed request is tried again: `attempts` in all (the first included),
/// waiting `base_delay` before the second, then twice as long each time up to `max_delay`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Four attempts, 250 ms doubling up to 4 s: what reads from the Hub use.
    fn default() -> Self {
        RetryPolicy { attempts: 4, base_delay: Duration::from_millis(250), max_delay: Duration::from_secs(4) }
    }
}

impl RetryPolicy {
    /// A [`Retrier`] for this policy: no jitter, `Retry-After` capped at `max_delay`.
    pub fn retrier(self) -> Retrier {
        Retrier { policy: self, max_retry_after: self.max_delay, jitter: None }
    }

    /// The wait after `attempt` (1-based) failed, before jitter: `base_delay` doubled `attempt - 1` times,
    /// doubling no further once it reaches `max_delay`, then capped at `max_delay`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.raw_backoff(attempt).min(self.max_delay)
    }

    /// [`backoff`](Self::backoff) before the cap (jitter spreads this value, then the cap applies).
    fn raw_backoff(&self, attempt: u32) -> Duration {
        let mut delay = self.base_delay;
        for _ in 1..attempt.max(1) {
            if delay >= self.max_delay {
                break;
            }
            delay = delay.saturating_mul(2);
        }
        delay
    }
}

/// HTTP statuses a caller tries again (inclusive ranges).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryStatuses(&'static [RangeInclusive<u16>]);

impl RetryStatuses {
    /// 408, 425, 429 and every 5xx.
    pub const STANDARD: RetryStatuses = RetryStatuses(&[408..=408, 425..=425, 429..=429, 500..=599]);
    /// 408, 429 and every 5xx: the Hub's reads and model downloads.
    pub const HUB: RetryStatuses = RetryStatuses(&[408..=408, 429..=429, 500..=599]);
    /// 408, 429, 500 and 502 to 504: Hub pushes (a 501 or 505 will not get better).
    pub const GATEWAY: RetryStatuses = RetryStatuses(&[408..=408, 429..=429, 500..=500, 502..=504]);
    /// 408, 409, 429 and every 5xx: OpenAI-compatible servers, where 409 means "busy, try again".
    pub const OPENAI: RetryStatuses = RetryStatuses(&[408..=409, 429..=429, 500..=599]);

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|range| range.contains(&status))
    }
}

/// What one attempt came to, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No answer: the connection failed, was reset, or timed out (`timeout`).
    Transport { timeout: bool },
    /// An HTTP answer with this status.
    Status(u16),
}

/// How an [`Outcome`] is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Success,
    /// Worth another try. `overload` marks the failures that say "slow down" (429, 408, timeouts).
    Retry {
        overload: bool,
    },
    /// 401 or 403: the credentials were refused; no retry will change that.
    Auth,
    /// Any other failure: this request will not succeed.
    Fatal,
}

impl Class {
    pub fn is_retry(self) -> bool {
        matches!(self, Class::Retry { .. })
    }
}

/// Sorts an outcome: transport failures and `statuses` are retried, 2xx succeed, 401 and 403 are
/// [`Class::Auth`], the rest fatal.
pub fn classify(outcome: Outcome, statuses: RetryStatuses) -> Class {
    match outcome {
        Outcome::Transport { timeout } => Class::Retry { overload: timeout },
        Outcome::Status(200..=299) => Class::Success,
        Outcome::Status(401 | 403) => Class::Auth,
        Outcome::Status(status) if statuses.contains(status) => Class::Retry { overload: matches!(status, 408 | 429) },
        Outcome::Status(_) => Class::Fatal,
    }
}

/// A `Retry-After` value in seconds (fractions allowed), when it is a usable one.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    if seconds.is_finite() && seconds >= 0.0 { Duration::try_from_secs_f64(seconds).ok() } else { None }
}

/// The `Retry-After` of an answer's headers, when it sent a usable one.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    parse_retry_after(headers.get(RETRY_AFTER)?.to_str().ok()?)
}

/// Spreads retry delays over 50-150% of the backoff, so that clients failing together do not retry
/// together. A seeded sequence (splitmix64): the same seed gives the same factors. Clones share it.
#[derive(Clone, Debug)]
pub struct Jitter(Arc<AtomicU64>);

impl Jitter {
    pub fn seeded(seed: u64) -> Self {
        Jitter(Arc::new(AtomicU64::new(seed)))
    }

    /// The next factor, in [0.5, 1.5). Lock-free.
    pub fn factor(&self) -> f64 {
        let mut z = self.0.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        0.5 + (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one attempt of [`Retrier::run`] came to.
#[derive(Debug)]
pub enum Step<T, E, R> {
    /// Stop with this result.
    Done(Result<T, E>),
    /// A failure worth another try: tried again after [`Retrier::delay`] while attempts are left, else
    /// the run ends with [`Stop::Exhausted`].
    Retry { reason: R, retry_after: Option<Duration> },
    /// Try again after this wait whatever the attempts left (the caller bounds how often); the attempt
    /// still counts.
    Again(Duration),
}

/// Why [`Retrier::run`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop<E, R> {
    /// An attempt ended with [`Step::Done`] and an error.
    Failed(E),
    /// Every attempt failed in a retryable way; `reason` is the last failure.
    Exhausted { reason: R, attempts: u32 },
}

/// A [`RetryPolicy`] with its pacing: jitter and the longest `Retry-After` honoured.
#[derive(Clone, Debug)]
pub struct Retrier {
    policy: RetryPolicy,
    max_retry_after: Duration,
    jitter: Option<Jitter>,
}

impl Retrier {
    /// Jitters computed delays (never a server's `Retry-After`).
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// Honours a `Retry-After` up to `cap` (by default the policy's `max_delay`).
    pub fn with_max_retry_after(mut self, cap: Duration) -> Self {
        self.max_retry_after = cap;
        self
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The wait after `attempt` (1-based) failed: the server's `retry_after` when it gave one (capped), else
    /// the policy's backoff, jittered when set, capped at `max_delay`.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(wait) = retry_after {
            return wait.min(self.max_retry_after);
        }
        let backoff = self.policy.raw_backoff(attempt);
        let spread = match &self.jitter {
            Some(jitter) => backoff.mul_f64(jitter.factor()),
            None => backoff,
        };
        spread.min(self.policy.max_delay)
    }

    /// Runs `attempt` (given its 1-based number) until it is done, or until `policy.attempts` (at least one)
    /// have failed in a retryable way. `on_retry` hears of each retry (the failure, the attempt that
    /// failed, the wait) before its wait.
    pub async fn run<T, E, R, F, Fut>(
        &self,
        mut attempt: F,
        mut on_retry: impl FnMut(&R, u32, Duration),
    ) -> Result<T, Stop<E, R>>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Step<T, E, R>>,
    {
        let attempts = self.policy.attempts.max(1);
        let mut number = 0;
        loop {
            number += 1;
            match attempt(number).await {
                Step::Done(Ok(value)) => return Ok(value),
                Step::Done(Err(error)) => return Err(Stop::Failed(error)),
                Step::Again(wait) => tokio::time::sleep(wait).await,
                Step::Retry { reason, retry_after } if number < attempts => {
                    let wait = self.delay(number, retry_after);
                    on_retry(&reason, number, wait);
                    tokio::time::sleep(wait).await;
                }
                Step::Retry { reason, .. } => return Err(Stop::Exhausted { reason, attempts: number }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn outcomes_are_classified() {
        let hub = RetryStatuses::HUB;
        assert_eq!(classify(Outcome::Transport { timeout: false }, hub), Class::Retry { overload: false });
        assert_eq!(classify(Outcome::Transport { timeout: true }, hub), Class::Retry { overload: true });
        assert_eq!(classify(Outcome::Status(200), hub), Class::Success);
        assert_eq!(classify(Outcome::Status(206), hub), Class::Success);
        assert_eq!(classify(Outcome::Status(429), hub), Class::Retry { overload: true });
        assert_eq!(classify(Outcome::Status(408), hub), Class::Retry { overload: true });
        assert_eq!(classify(Outcome::Status(503), hub), Class::Retry { overload: false });
        assert_eq!(classify(Outcome::Status(599), hub), Class::Retry { overload: false });
        assert_eq!(classify(Outcome::Status(401), hub), Class::Auth);
        assert_eq!(classify(Outcome::Status(403), hub), Class::Auth);
        for fatal in [400, 404, 409, 413, 422, 425] {
            assert_eq!(classify(Outcome::Status(fatal), hub), Class::Fatal, "{fatal}");
        }
        // The sets differ only where the callers did.
        assert!(RetryStatuses::STANDARD.contains(425) && !RetryStatuses::HUB.contains(425));
        assert!(RetryStatuses::OPENAI.contains(409) && !RetryStatuses::HUB.contains(409));
        assert!(RetryStatuses::GATEWAY.contains(504) && !RetryStatuses::GATEWAY.contains(501));
        assert!(!RetryStatuses::GATEWAY.contains(505) && RetryStatuses::HUB.contains(505));
        // Credentials are refused even where a set would retry them.
        assert_eq!(classify(Outcome::Status(401), RetryStatuses(&[400..=499])), Class::Auth);
    }

    #[test]
    fn retry_after_takes_seconds_and_refuses_the_rest() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0.5 "), Some(ms(500)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        for bad in ["", "-1", "soon", "NaN", "inf", "1e300", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(parse_retry_after(bad), None, "{bad}");
        }
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy { attempts: 4, base_delay: ms(250), max_delay: Duration::from_secs(4) };
        let delays: Vec<Duration> = (1..=7).map(|n| policy.backoff(n)).collect();
        assert_eq!(delays, [ms(250), ms(500), ms(1000), ms(2000), ms(4000), ms(4000), ms(4000)]);
        assert_eq!(policy.backoff(0), ms(250));
        assert_eq!(policy.backoff(u32::MAX), Duration::from_secs(4));
        let huge = RetryPolicy { attempts: 1, base_delay: Duration::MAX, max_delay: Duration::MAX };
        assert_eq!(huge.backoff(40), Duration::MAX, "saturates instead of overflowing");

        let retrier = policy.retrier();
        assert_eq!(retrier.delay(2, None), ms(500));
        assert_eq!(retrier.delay(1, Some(ms(1500))), ms(1500), "Retry-After wins over the backoff");
        assert_eq!(retrier.delay(1, Some(Duration::from_secs(60))), Duration::from_secs(4), "within the cap");
        let patient = retrier.with_max_retry_after(Duration::from_secs(120));
        assert_eq!(patient.delay(1, Some(Duration::from_secs(60))), Duration::from_secs(60));
        assert_eq!(patient.delay(9, None), Duration::from_secs(4), "the backoff keeps its own cap");
    }

    #[test]
    fn jitter_spreads_within_bounds_and_is_seeded() {
        let policy = RetryPolicy { attempts: 11, base_delay: ms(250), max_delay: Duration::from_secs(30) };
        let retrier = policy.retrier().with_jitter(Jitter::seeded(1));
        for _ in 0..200 {
            let first = retrier.delay(1, None);
            assert!(first >= ms(125) && first <= ms(375), "{first:?}");
            let late = retrier.delay(31, None);
            assert!(late >= Duration::from_secs(15) && late <= Duration::from_secs(30), "{late:?}");
        }
        let factors = |seed| {
            let jitter = Jitter::seeded(seed);
            (0..32).map(|_| jitter.factor()).collect::<Vec<f64>>()
        };
        assert_eq!(factors(7), factors(7));
        assert_ne!(factors(7), factors(8));
        assert!(factors(7).iter().all(|f| (0.5..1.5).contains(f)));
        let mean = factors(3).iter().sum::<f64>() / 32.0;
        assert!((0.8..1.2).contains(&mean), "{mean}");
        // Clones share one sequence.
        let shared = Jitter::seeded(7);
        let clone = shared.clone();
        let expected = factors(7);
        assert_eq!([shared.factor(), clone.factor()], [expected[0], expected[1]]);
        // A server's Retry-After is not jittered.
        assert_eq!(retrier.delay(1, Some(Duration::from_secs(2))), Duration::from_secs(2));
    }

    fn quick(attempts: u32) -> Retrier {
        RetryPolicy { attempts, base_delay: ms(1), max_delay: ms(4) }.retrier()
    }

    #[tokio::test]
    async fn run_retries_until_success() {
        let retries = Mutex::new(Vec::new());
        let result: Result<u32, Stop<(), &str>> =
            quick(4)
                .run(
                    |n| async move {
                        if n < 3 { Step::Retry { reason: "busy", retry_after: None } } else { Step::Done(Ok(n)) }
                    },
                    |reason, n, wait| retries.lock().unwrap().push((reason.to_string(), n, wait)),
                )
                .await;
        assert_eq!(result, Ok(3));
        assert_eq!(*retries.lock().unwrap(), [("busy".to_string(), 1, ms(1)), ("busy".to_string(), 2, ms(2))]);
    }

    #[tokio::test]
    async fn run_gives_up_after_the_attempts_with_the_last_reason() {
        let mut retried = 0;
        let result: Result<(), Stop<(), u32>> =
            quick(3).run(|n| async move { Step::Retry { reason: n, retry_after: None } }, |_, _, _| retried += 1).await;
        assert_eq!(result, Err(Stop::Exhausted { reason: 3, attempts: 3 }));
        assert_eq!(retried, 2);
        // Zero attempts still makes one.
        let result: Result<(), Stop<(), u32>> =
            quick(0).run(|n| async move { Step::Retry { reason: n, retry_after: None } }, |_, _, _| {}).await;
        assert_eq!(result, Err(Stop::Exhausted { reason: 1, attempts: 1 }));
    }

    #[tokio::test]
    async fn run_stops_at_a_final_error_and_waits_are_counted() {
        let result: Result<(), Stop<&str, ()>> = quick(5)
            .run(
                |n| async move {
                    match n {
                        1 | 2 => Step::Again(ms(1)),
                        _ => Step::Done(Err("refused")),
                    }
                },
                |_, _, _| panic!("no retry"),
            )
            .await;
        assert_eq!(result, Err(Stop::Failed("refused")));
        // `Again` is not bounded by the attempts; it still counts them.
        let result: Result<u32, Stop<(), ()>> = quick(1)
            .run(
                |n| async move {
                    match n {
                        1..=3 => Step::Again(Duration::ZERO),
                        _ => Step::Done(Ok(n)),
                    }
                },
                |_, _, _| {},
            )
            .await;
        assert_eq!(result, Ok(4));
    }
}
