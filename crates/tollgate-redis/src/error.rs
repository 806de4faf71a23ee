//! [`RedisStoreError`]: why the Redis store could not decide.

use std::time::Duration;

/// Why the Redis store could not decide a request.
///
/// With [`FailurePolicy::FailClosed`](crate::FailurePolicy::FailClosed) these reach the caller
/// (the HTTP layer answers `503 Service Unavailable` with a JSON body); with the other policies
/// they are counted and logged, and the request is decided without Redis.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// Redis did not answer within the time budget of one decision.
    #[error("Redis did not answer within the {budget:?} budget of one rate-limit decision; check Redis latency and load, or raise RedisStoreBuilder::budget")]
    Timeout {
        /// The budget that ran out.
        budget: Duration,
    },
    /// A Redis command failed (connection refused or lost, server error, ...).
    #[error("Redis command failed: {0}; check that Redis is reachable at the configured address and that its version is 6.0 or later")]
    Redis(#[from] redis::RedisError),
    /// No connection could be taken from the `deadpool-redis` pool.
    #[error("could not get a connection from the deadpool-redis pool: {0}; check that Redis is reachable and the pool is large enough")]
    Pool(#[from] deadpool_redis::PoolError),
    /// The circuit breaker is open: Redis failed repeatedly and is not called until the
    /// cool-down has passed.
    #[error("Redis circuit breaker is open after {failures} consecutive failures; Redis is not called again before the cool-down of {cool_down:?} has passed")]
    CircuitOpen {
        /// Consecutive failures that opened the breaker.
        failures: u32,
        /// How long the breaker stays open before letting a probe through.
        cool_down: Duration,
    },
    /// The script's reply did not have the expected shape.
    #[error("unexpected reply from the tollgate Lua script: {0}")]
    Protocol(String),
    /// A rule uses an algorithm this version of the Redis store does not implement.
    #[error("rule {rule:?} uses the algorithm {algorithm}, which this version of tollgate-redis does not implement; upgrade tollgate-redis to the tollgate-core version in use")]
    UnsupportedAlgorithm {
        /// The rule.
        rule: String,
        /// The algorithm's name.
        algorithm: &'static str,
    },
}

impl RedisStoreError {
    /// Whether the error says Redis is unavailable or slow (as opposed to a misconfiguration):
    /// these count towards the circuit breaker.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            RedisStoreError::Timeout { .. }
                | RedisStoreError::Redis(_)
                | RedisStoreError::Pool(_)
                | RedisStoreError::CircuitOpen { .. }
        )
    }
}
