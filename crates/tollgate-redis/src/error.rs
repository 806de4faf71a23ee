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
    /// Redis could not be reached or cannot serve right now: the connection was refused, lost
    /// or timed out, or Redis answered `LOADING`, `BUSY`, `MASTERDOWN`, `READONLY`,
    /// `CLUSTERDOWN`, `TRYAGAIN` or `OOM`. These count towards the circuit breaker.
    #[error("Redis is unavailable: {0}; check that Redis is reachable at the configured address and serving (not loading a dataset, failing over, out of memory or blocked by a slow script)")]
    Unavailable(redis::RedisError),
    /// Redis answered, and refused to run the script: authentication, ACL permissions, or a
    /// server that does not support what the script needs. Not unavailability: the breaker
    /// stays closed.
    #[error("Redis refused the rate-limit script: {0}; check the credentials, that the user may run FCALL and FUNCTION LOAD (Redis 7) or EVALSHA and SCRIPT LOAD, and TIME, GET, SET and DEL, and that Redis is 6.0 or later")]
    Refused(redis::RedisError),
    /// The tollgate script raised an error, or the reply could not be read as its reply: a bug
    /// or an incompatible script version, not unavailability (the breaker stays closed).
    /// Stored state the script cannot read is not such an error: it is treated as absent.
    #[error("the tollgate script failed on Redis: {0}; this is a bug or an incompatible script version, not Redis unavailability")]
    Script(redis::RedisError),
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
    /// The script's reply did not have the expected shape (not unavailability).
    #[error("unexpected reply from the tollgate Lua script: {0}; this is a bug or an incompatible script version, not Redis unavailability")]
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
    /// Whether the error says Redis is unavailable or slow (as opposed to a refusal, a script
    /// error or a misconfiguration): only these count towards the circuit breaker, so state
    /// the script cannot handle on one key never switches limiting off for every key.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RedisStoreError::Timeout { .. }
            | RedisStoreError::Unavailable(_)
            | RedisStoreError::CircuitOpen { .. } => true,
            // A connection the pool could not open for a reason other than reachability (a
            // wrong password) is a refusal.
            RedisStoreError::Pool(deadpool_redis::PoolError::Backend(error)) => {
                classify(error) == Class::Unavailable
            }
            RedisStoreError::Pool(_) => true,
            _ => false,
        }
    }
}

impl From<redis::RedisError> for RedisStoreError {
    /// Sorts a Redis error into unavailability, refusal, or script error.
    fn from(error: redis::RedisError) -> Self {
        match classify(&error) {
            Class::Unavailable => RedisStoreError::Unavailable(error),
            Class::Refused => RedisStoreError::Refused(error),
            Class::Script => RedisStoreError::Script(error),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Unavailable,
    Refused,
    Script,
}

fn classify(error: &redis::RedisError) -> Class {
    use redis::{ErrorKind, ServerErrorKind};
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
    {
        return Class::Unavailable;
    }
    match error.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => Class::Unavailable,
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            // A primary demoted during a failover: the topology is changing.
            | ServerErrorKind::ReadOnly
            // Redirects the cluster client could not follow: the slot map is in flux.
            | ServerErrorKind::Moved
            | ServerErrorKind::Ask,
        ) => Class::Unavailable,
        ErrorKind::AuthenticationFailed
        | ErrorKind::InvalidClientConfig
        | ErrorKind::RESP3NotSupported
        | ErrorKind::Server(ServerErrorKind::NoPerm) => Class::Refused,
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            // A plain `ERR`: the script's own error, or a command this server does not know.
            let detail = error.detail().unwrap_or_default();
            if detail.contains("unknown command") || detail.contains("syntax error") {
                Class::Refused
            } else {
                Class::Script
            }
        }
        // Codes redis-rs has no kind for (`BUSY`, `OOM`, `NOAUTH`, `WRONGPASS`, `WRONGTYPE`...).
        _ => match error.code() {
            // BUSY: another script is running past the time limit; OOM: maxmemory reached,
            // no write succeeds. Both hold for every key until they pass.
            Some("BUSY" | "OOM") => Class::Unavailable,
            Some("NOAUTH" | "WRONGPASS" | "NOPERM") => Class::Refused,
            _ => Class::Script,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, ServerErrorKind};

    fn server(kind: ServerErrorKind, detail: &'static str) -> redis::RedisError {
        redis::RedisError::from((ErrorKind::Server(kind), "server", detail.to_owned()))
    }

    fn extension(code: &str) -> redis::RedisError {
        redis::make_extension_error(code.to_owned(), Some("detail".to_owned()))
    }

    #[test]
    fn only_unavailability_counts_towards_the_breaker() {
        let unavailable = [
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)),
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe)),
            server(
                ServerErrorKind::BusyLoading,
                "Redis is loading the dataset in memory",
            ),
            server(ServerErrorKind::ClusterDown, "The cluster is down"),
            server(
                ServerErrorKind::TryAgain,
                "Multiple keys request during rehashing",
            ),
            server(ServerErrorKind::MasterDown, "Link with MASTER is down"),
            server(
                ServerErrorKind::ReadOnly,
                "You can't write against a read only replica.",
            ),
            extension("BUSY"),
            extension("OOM"),
            redis::RedisError::from((ErrorKind::ClusterConnectionNotFound, "no connection")),
        ];
        for error in unavailable {
            let e = RedisStoreError::from(error);
            assert!(e.is_unavailable(), "{e:?}");
            assert!(e.to_string().contains("Redis is unavailable"), "{e}");
        }
        let script = [
            server(
                ServerErrorKind::ResponseError,
                "user_script:1: attempt to get length of local 'str'",
            ),
            extension("WRONGTYPE"),
            redis::RedisError::from((ErrorKind::UnexpectedReturnType, "not an array")),
            redis::RedisError::from((ErrorKind::Parse, "not an integer")),
        ];
        for error in script {
            let e = RedisStoreError::from(error);
            assert!(!e.is_unavailable(), "{e:?}");
            assert!(matches!(e, RedisStoreError::Script(_)), "{e:?}");
            assert!(e.to_string().contains("not Redis unavailability"), "{e}");
        }
        let refused = [
            extension("NOAUTH"),
            extension("WRONGPASS"),
            server(
                ServerErrorKind::NoPerm,
                "this user has no permissions to run 'evalsha'",
            ),
            server(ServerErrorKind::ResponseError, "unknown command 'EVALSHA'"),
            redis::RedisError::from((ErrorKind::AuthenticationFailed, "bad password")),
        ];
        for error in refused {
            let e = RedisStoreError::from(error);
            assert!(!e.is_unavailable(), "{e:?}");
            assert!(matches!(e, RedisStoreError::Refused(_)), "{e:?}");
        }
        assert!(!RedisStoreError::Protocol("short".into()).is_unavailable());
        let pool = |e| RedisStoreError::Pool(deadpool_redis::PoolError::Backend(e));
        assert!(!pool(extension("WRONGPASS")).is_unavailable());
        assert!(pool(redis::RedisError::from(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )))
        .is_unavailable());
    }
}
