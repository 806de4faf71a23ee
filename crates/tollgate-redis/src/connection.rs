//! [`RedisConnection`]: the connections an application may already have, behind one type.
//!
//! This module owns how a script call reaches Redis: a [`ConnectionManager`] (one multiplexed
//! socket that reconnects by itself; the default), a bare [`MultiplexedConnection`], a
//! [`deadpool_redis::Pool`], or a Redis Cluster connection. It knows nothing of rate limits.
//!
//! Why the manager is the default: with 256 concurrent callers one multiplexed socket pipelines
//! every request, while each `pool.get()` of deadpool-redis costs an extra round trip to recycle
//! the connection (see the crate documentation for the measured figures).

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use std::sync::atomic::{AtomicBool, Ordering};

use redis::aio::ConnectionLike;
use redis::IntoConnectionInfo;

use crate::error::RedisStoreError;
use crate::script::{Call, FUNCTION, SCRIPT};

/// A connection to Redis or to a Redis Cluster. Cloning is cheap and shares the connection.
///
/// Its `Debug` output names the kind of connection only: no address, user or password.
///
/// Build one from what the application already has (`From` is implemented for each), or with
/// [`RedisConnection::connect`] / [`RedisConnection::connect_cluster`].
#[derive(Clone)]
#[non_exhaustive]
pub enum RedisConnection {
    /// One multiplexed socket that reconnects by itself: concurrent requests are pipelined.
    Manager(ConnectionManager),
    /// One multiplexed socket, without reconnection.
    Multiplexed(MultiplexedConnection),
    /// A `deadpool-redis` pool: one connection taken (and recycled) per decision.
    Pool(deadpool_redis::Pool),
    /// A Redis Cluster: keys on different hash slots are checked per slot, in parallel.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Manager(_) => "RedisConnection::Manager",
            RedisConnection::Multiplexed(_) => "RedisConnection::Multiplexed",
            RedisConnection::Pool(_) => "RedisConnection::Pool",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

/// `url` with its credentials replaced by `***`, for logs and messages: the password (and the
/// user name) of `redis://user:secret@host:6379/0`, and the `pass` parameter of a
/// `unix:///run/redis.sock?pass=secret` URL. Nothing else is changed.
///
/// ```
/// use tollgate_redis::redact_url;
///
/// assert_eq!(redact_url("redis://:s3cret@10.0.0.5:6379/2"), "redis://***@10.0.0.5:6379/2");
/// assert_eq!(redact_url("rediss://app:s3cret@cache:6380"), "rediss://***@cache:6380");
/// assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***{}", &authority[at..]),
        None => authority.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let (path, query) = tail.split_at(q + 1);
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("pass") => format!("{name}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

impl From<ConnectionManager> for RedisConnection {
    fn from(c: ConnectionManager) -> Self {
        RedisConnection::Manager(c)
    }
}

impl From<MultiplexedConnection> for RedisConnection {
    fn from(c: MultiplexedConnection) -> Self {
        RedisConnection::Multiplexed(c)
    }
}

impl From<deadpool_redis::Pool> for RedisConnection {
    fn from(p: deadpool_redis::Pool) -> Self {
        RedisConnection::Pool(p)
    }
}

impl From<ClusterConnection> for RedisConnection {
    fn from(c: ClusterConnection) -> Self {
        RedisConnection::Cluster(c)
    }
}

/// Reconnection settings for the connections this crate opens itself: retry quickly and
/// briefly, so that a Redis that comes back is used again within a fraction of a second. The
/// store's own time budget bounds every decision whatever these say.
pub(crate) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200))
        .set_number_of_retries(3)
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_secs(1)))
}

impl RedisConnection {
    /// Connects to one Redis (`redis://host:port/db`, `rediss://...`, `unix://...`) with a
    /// [`ConnectionManager`] tuned to reconnect within a fraction of a second.
    pub async fn connect(url: impl IntoConnectionInfo) -> Result<Self, RedisStoreError> {
        let client = redis::Client::open(url)?;
        let manager = ConnectionManager::new_with_config(client, manager_config()).await?;
        Ok(RedisConnection::Manager(manager))
    }

    /// Connects to a Redis Cluster through any of its nodes (`redis://host:port` each).
    pub async fn connect_cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, RedisStoreError> {
        let client = ClusterClientBuilder::new(nodes)
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(1))
            .retries(2)
            .min_retry_wait(10)
            .max_retry_wait(200)
            .build()?;
        Ok(RedisConnection::Cluster(
            client.get_async_connection().await?,
        ))
    }

    /// Whether keys must be grouped by hash slot.
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, RedisConnection::Cluster(_))
    }

    /// One script call: `FCALL` of the Function library while this Redis runs it (loading it
    /// when it is missing), else `EVALSHA` (which loads the script on `NOSCRIPT`).
    pub(crate) async fn invoke(
        &self,
        call: &Call<'_>,
        dialect: &Dialect,
    ) -> Result<Vec<i64>, RedisStoreError> {
        // The pool's and the Cluster's futures are boxed: a future is as large as its largest
        // arm, and every decision copies it as it is awaited, level by level.
        match self {
            RedisConnection::Manager(c) => invoke_on(&mut c.clone(), call, dialect).await,
            RedisConnection::Multiplexed(c) => invoke_on(&mut c.clone(), call, dialect).await,
            RedisConnection::Pool(pool) => {
                Box::pin(async { invoke_on(&mut pool.get().await?, call, dialect).await }).await
            }
            RedisConnection::Cluster(c) => {
                Box::pin(async { invoke_on(&mut c.clone(), call, dialect).await }).await
            }
        }
    }

    /// One plain command (not the script): what the operator's tools send, such as
    /// [`RedisClientQuotas`](crate::RedisClientQuotas)' `HSET`.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisStoreError> {
        Ok(match self {
            RedisConnection::Manager(c) => cmd.query_async(&mut c.clone()).await?,
            RedisConnection::Multiplexed(c) => cmd.query_async(&mut c.clone()).await?,
            RedisConnection::Pool(pool) => cmd.query_async(&mut pool.get().await?).await?,
            RedisConnection::Cluster(c) => cmd.query_async(&mut c.clone()).await?,
        })
    }

    /// One pipeline (the fixed-window counters' commands, see `store::counters`), its
    /// commands' errors returned as values: an error of one command (a counter key holding
    /// something else than an integer) is that key's problem, not the call's.
    pub(crate) async fn pipeline(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<Vec<redis::Value>, RedisStoreError> {
        // Boxed arms: see `invoke`.
        Ok(match self {
            RedisConnection::Manager(c) => pipe.query_async(&mut c.clone()).await?,
            RedisConnection::Multiplexed(c) => pipe.query_async(&mut c.clone()).await?,
            RedisConnection::Pool(pool) => {
                Box::pin(async {
                    let mut conn = pool.get().await?;
                    Ok::<_, RedisStoreError>(pipe.query_async(&mut conn).await?)
                })
                .await?
            }
            RedisConnection::Cluster(c) => {
                Box::pin(async { pipe.query_async(&mut c.clone()).await }).await?
            }
        })
    }

    /// Loads the Function library (every primary, in Cluster), or the script where Functions
    /// are refused.
    pub(crate) async fn load_script(&self, dialect: &Dialect) -> Result<(), RedisStoreError> {
        match self {
            RedisConnection::Manager(c) => load_on(&mut c.clone(), dialect).await,
            RedisConnection::Multiplexed(c) => load_on(&mut c.clone(), dialect).await,
            RedisConnection::Pool(pool) => load_on(&mut pool.get().await?, dialect).await,
            RedisConnection::Cluster(c) => load_on(&mut c.clone(), dialect).await,
        }
    }
}

/// Whether Redis runs the script as a Function (Redis 7 and later, the default guess) or only as
/// an `EVALSHA` script (Redis 6, or a user whose ACL refuses `FCALL` or `FUNCTION LOAD`): learnt
/// once per store, from the first refusal.
#[derive(Debug, Default)]
pub(crate) struct Dialect {
    scripts_only: AtomicBool,
}

impl Dialect {
    fn functions(&self) -> bool {
        !self.scripts_only.load(Ordering::Relaxed)
    }

    fn refused(&self, error: &redis::RedisError) {
        tracing::info!(
            target: "tollgate_redis",
            %error,
            "Redis refuses Functions; the rate-limit script runs by EVALSHA"
        );
        self.scripts_only.store(true, Ordering::Relaxed);
    }
}

/// Redis refuses Functions altogether: a server older than 7.0 (`unknown command`), or an ACL
/// without `FCALL` or `FUNCTION` (`NOPERM`).
fn functions_refused(error: &redis::RedisError) -> bool {
    error.code() == Some("NOPERM")
        || error
            .detail()
            .is_some_and(|d| d.contains("unknown command") || d.contains("unknown subcommand"))
}

/// The library is not loaded on the node that answered (restarted without persistence, flushed,
/// or a new primary that never had it).
fn function_missing(error: &redis::RedisError) -> bool {
    error
        .detail()
        .is_some_and(|d| d.contains("Function not found"))
}

async fn load_function<C: ConnectionLike + Send>(conn: &mut C) -> redis::RedisResult<()> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&FUNCTION.code)
        .query_async::<redis::Value>(conn)
        .await
        .map(drop)
}

async fn invoke_on<C: ConnectionLike + Send>(
    conn: &mut C,
    call: &Call<'_>,
    dialect: &Dialect,
) -> Result<Vec<i64>, RedisStoreError> {
    if dialect.functions() {
        match call.fcall().query_async(conn).await {
            Ok(values) => return Ok(values),
            Err(e) if function_missing(&e) => match load_function(conn).await {
                Ok(()) => return Ok(call.fcall().query_async(conn).await?),
                Err(e) if functions_refused(&e) => dialect.refused(&e),
                Err(e) => return Err(e.into()),
            },
            Err(e) if functions_refused(&e) => dialect.refused(&e),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(call.invocation().invoke_async(conn).await?)
}

async fn load_on<C: ConnectionLike + Send>(
    conn: &mut C,
    dialect: &Dialect,
) -> Result<(), RedisStoreError> {
    if dialect.functions() {
        match load_function(conn).await {
            Ok(()) => return Ok(()),
            Err(e) if functions_refused(&e) => dialect.refused(&e),
            Err(e) => return Err(e.into()),
        }
    }
    SCRIPT.load_async(conn).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-Zm9vYmFy";

    #[test]
    fn urls_are_printed_without_credentials() {
        for (url, want) in [
            (
                format!("redis://:{SECRET}@10.0.0.5:6379/2"),
                "redis://***@10.0.0.5:6379/2",
            ),
            (
                format!("redis://app:{SECRET}@cache:6380"),
                "redis://***@cache:6380",
            ),
            (
                format!("rediss://app:{SECRET}@cache/0?protocol=resp3"),
                "rediss://***@cache/0?protocol=resp3",
            ),
            (
                format!("unix:///run/redis.sock?db=1&pass={SECRET}"),
                "unix:///run/redis.sock?db=1&pass=***",
            ),
            // A password holding '@' or '/': everything up to the last '@' of the authority.
            (format!("redis://:{SECRET}@x@host:1"), "redis://***@host:1"),
            (
                "redis://127.0.0.1:6379".to_owned(),
                "redis://127.0.0.1:6379",
            ),
        ] {
            let redacted = redact_url(&url);
            assert_eq!(redacted, want);
            assert!(!redacted.contains(SECRET));
        }
    }

    #[tokio::test]
    async fn connection_errors_and_debug_never_show_the_password() {
        // Nothing listens on port 1: the connection is refused.
        let url = format!("redis://user:{SECRET}@127.0.0.1:1/0");
        let error = RedisConnection::connect(url.as_str()).await.unwrap_err();
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
        assert!(error.is_unavailable(), "{error:?}");
        // A pool holds the URL; its Debug, and ours, must not show it.
        let pool = deadpool_redis::Config::from_url(url.as_str())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let connection = RedisConnection::from(pool);
        let store = crate::RedisStore::builder(connection.clone()).build();
        for shown in [format!("{connection:?}"), format!("{store:?}")] {
            assert!(!shown.contains(SECRET), "{shown}");
        }
    }
}
