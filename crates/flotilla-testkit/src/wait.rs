//! Time limits for tests: a hard bound on the whole test, and polling for a condition.

use std::future::Future;
use std::time::Duration;

/// Any error a test may return with `?`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a test (or a fallible helper) returns: failing with any error.
pub type TestResult<T = ()> = Result<T, BoxError>;

/// How often [`eventually`] checks its condition: short against the seconds the
/// tests wait, long against a check's cost.
const POLL: Duration = Duration::from_millis(20);

/// Runs a test body under a hard time limit, so that a hang fails the test instead
/// of stalling the suite; panics (failing the test) when `limit` passes.
///
/// Logs go to the test's output when `FLOTILLA_TEST_LOG` holds a tracing filter
/// (e.g. `FLOTILLA_TEST_LOG=flotilla_registry=debug`); they are off otherwise.
/// Warnings are kept for [`crate::warnings_with`] either way.
pub async fn bounded<F: Future>(limit: Duration, test: F) -> F::Output {
    crate::logs::init();
    match tokio::time::timeout(limit, test).await {
        Ok(output) => output,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

/// Polls `check` until it returns `Some`, and returns that; fails naming `what` once
/// `within` has passed. For whatever a test waits for that happens asynchronously.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("timed out after {within:?} waiting for {what}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn bounded_returns_what_the_test_returns() {
        assert_eq!(bounded(Duration::from_secs(1), async { 7 }).await, 7);
    }

    #[tokio::test]
    #[should_panic(expected = "did not finish within")]
    async fn bounded_fails_a_test_that_hangs() {
        bounded(Duration::from_millis(50), std::future::pending::<()>()).await;
    }

    #[tokio::test]
    async fn eventually_returns_the_first_value_the_check_gives() {
        let calls = Cell::new(0);
        let got = eventually("the third call", Duration::from_secs(5), || async {
            calls.set(calls.get() + 1);
            (calls.get() == 3).then_some("third")
        })
        .await;
        assert_eq!(got, Ok("third"));
    }

    #[tokio::test]
    async fn eventually_names_what_it_waited_for_when_time_runs_out() {
        let got: Result<(), String> =
            eventually("the impossible", Duration::from_millis(100), || async {
                None
            })
            .await;
        let err = got.expect_err("the check never holds");
        assert!(err.contains("the impossible"), "{err}");
    }
}
