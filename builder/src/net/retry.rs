//! The one retry loop of builder: bounded attempts, doubling backoff with
//! a cap, waits a server asks for (rate limits), and an overall deadline
//! that no wait may pass. The caller classifies each attempt, since only
//! it knows what may be sent again (see [`super::Resend`]).

use std::future::Future;
use std::time::Duration;

// tokio's clock, which a test can pause: the waits below are then exact.
use tokio::time::Instant;

/// How hard to try before giving up.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts at most, the first included.
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// From the first attempt: no wait is started that would end past it.
    pub deadline: Duration,
    /// One request's whole exchange, body included.
    pub request_timeout: Duration,
}

impl RetryPolicy {
    /// The DigitalOcean API: small answers, and rate-limit waits of up to
    /// a minute (its limit is 250 requests a minute).
    pub fn digitalocean() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
            deadline: Duration::from_secs(150),
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Spaces and an operator's own server: firstboot is ~4 MB.
    pub fn transfer() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            deadline: Duration::from_secs(300),
            request_timeout: Duration::from_secs(120),
        }
    }
}

/// What one attempt came to.
pub enum Step<T, E> {
    Done(T),
    /// Final: not retried.
    Fail(E),
    /// Worth another attempt; `wait` is what the server asked for, else
    /// the backoff applies.
    Retry {
        why: String,
        wait: Option<Duration>,
    },
}

/// Every attempt failed, or the deadline came first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    pub attempts: u32,
    pub elapsed: Duration,
    /// Why the last attempt failed.
    pub last: String,
}

impl std::fmt::Display for GaveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no usable answer after {} attempt{} in {}; the last: {}",
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            crate::log::elapsed(self.elapsed),
            self.last
        )
    }
}

pub enum Error<E> {
    Failed(E),
    GaveUp(GaveUp),
}

/// Run `attempt` until it is done or fails for good, within `policy`.
/// `what` names the request in the warning logged before each retry.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    what: &str,
    mut attempt: F,
) -> Result<T, Error<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Step<T, E>>,
{
    let started = Instant::now();
    let mut backoff = policy.first_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (why, asked) = match attempt().await {
            Step::Done(value) => return Ok(value),
            Step::Fail(error) => return Err(Error::Failed(error)),
            Step::Retry { why, wait } => (why, wait),
        };
        let pause = asked.unwrap_or(backoff);
        let left = policy.deadline.saturating_sub(started.elapsed());
        if attempts >= policy.attempts || pause >= left {
            return Err(Error::GaveUp(GaveUp {
                attempts,
                elapsed: started.elapsed(),
                last: why,
            }));
        }
        tracing::warn!(
            attempt = attempts,
            "{what}: {why}; retrying in {}",
            crate::log::elapsed(pause)
        );
        tokio::time::sleep(pause).await;
        if asked.is_none() {
            backoff = (backoff * 2).min(policy.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn policy(attempts: u32, deadline_ms: u64) -> RetryPolicy {
        RetryPolicy {
            attempts,
            first_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            deadline: Duration::from_millis(deadline_ms),
            request_timeout: Duration::from_secs(1),
        }
    }

    fn run<T>(f: impl Future<Output = T>) -> T {
        super::super::runtime().unwrap().block_on(f)
    }

    /// On a paused clock, which moves only by the loop's own waits: the
    /// time it returns is exactly what the loop waited, whatever the
    /// machine's load.
    fn run_paused<T>(f: impl Future<Output = T>) -> (T, Duration) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let started = Instant::now();
            let value = f.await;
            (value, started.elapsed())
        })
    }

    #[test]
    fn retries_until_done_within_the_attempts() {
        let calls = Cell::new(0);
        let result: Result<u32, Error<()>> = run(retry(&policy(4, 10_000), "t", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Step::Retry {
                        why: format!("try {n}"),
                        wait: None,
                    }
                } else {
                    Step::Done(n)
                }
            }
        }));
        assert!(matches!(result, Ok(3)));
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn gives_up_after_the_attempts_with_the_last_reason() {
        let calls = Cell::new(0);
        let result: Result<(), Error<()>> = run(retry(&policy(3, 10_000), "t", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                Step::Retry {
                    why: format!("try {n}"),
                    wait: None,
                }
            }
        }));
        match result {
            Err(Error::GaveUp(g)) => {
                assert_eq!((g.attempts, g.last.as_str()), (3, "try 3"));
                assert!(g.to_string().contains("after 3 attempts"), "{g}");
            }
            _ => panic!("did not give up"),
        }
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn a_wait_past_the_deadline_gives_up_at_once() {
        let calls = Cell::new(0);
        let (result, waited) = run_paused(retry(&policy(10, 200), "t", || {
            calls.set(calls.get() + 1);
            async {
                Step::Retry {
                    why: "rate limited".into(),
                    wait: Some(Duration::from_secs(60)),
                }
            }
        }));
        let result: Result<(), Error<()>> = result;
        assert!(matches!(
            result,
            Err(Error::GaveUp(GaveUp { attempts: 1, .. }))
        ));
        assert_eq!(calls.get(), 1);
        assert_eq!(waited, Duration::ZERO, "it waited before giving up");
    }

    #[test]
    fn the_deadline_bounds_many_short_retries() {
        // Backoffs of 5, 10, 20, 20... ms: 5 + 10 + 20 * 4 = 95 ms fit in
        // the 100 ms deadline, the next 20 would not, so it gives up after
        // 7 attempts having waited 95 ms, never past the deadline.
        let (result, waited) = run_paused(retry(&policy(1_000, 100), "t", || async {
            Step::Retry {
                why: "busy".into(),
                wait: None,
            }
        }));
        let result: Result<(), Error<()>> = result;
        match result {
            Err(Error::GaveUp(g)) => assert_eq!(g.attempts, 7, "{g}"),
            _ => panic!("did not give up"),
        }
        assert_eq!(waited, Duration::from_millis(95));
    }

    #[test]
    fn a_final_failure_is_not_retried() {
        let calls = Cell::new(0);
        let result: Result<(), Error<&str>> = run(retry(&policy(5, 10_000), "t", || {
            calls.set(calls.get() + 1);
            async { Step::Fail("refused") }
        }));
        assert!(matches!(result, Err(Error::Failed("refused"))));
        assert_eq!(calls.get(), 1);
    }
}
