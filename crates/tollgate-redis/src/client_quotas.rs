//! [`RedisClientQuotas`]: client quotas an operator changes at runtime, kept in one Redis hash
//! that every instance of a fleet reads (`RateLimitBuilder::client_quotas` in `tollgate`).
//!
//! The hash `<prefix>:client_quotas` maps `<rule name>:<client digest in 32 hex digits>` to a
//! quota in its text form (`6000/minute`). Clients are named by digest only (the layer's
//! `client_digest` of the raw value), so no raw identity is ever stored.

use redis::ToRedisArgs;
use tollgate_core::{ClientQuota, ClientQuotas, Key, Quota};

use crate::connection::RedisConnection;
use crate::error::RedisStoreError;

/// Client quotas kept in Redis: [`set`](Self::set) and [`remove`](Self::remove) change them,
/// every instance reading them ([`ClientQuotas::load`]) sees the change at its next read.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tollgate_core::{Key, Quota};
/// use tollgate_redis::{RedisClientQuotas, RedisConnection};
///
/// let quotas = RedisClientQuotas::new(RedisConnection::connect("redis://127.0.0.1/").await?, "tollgate");
/// // The digest comes from the layer: `layer.client_digest("per_token", "enterprise-demo")`.
/// let client = Key::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
/// quotas.set("per_token", client, Quota::per_minute(6000)?).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RedisClientQuotas {
    connection: RedisConnection,
    key: String,
}

impl RedisClientQuotas {
    /// The quotas under `<prefix>:client_quotas` (use the store's prefix, `tollgate` by default).
    pub fn new(connection: impl Into<RedisConnection>, prefix: &str) -> Self {
        Self {
            connection: connection.into(),
            key: format!("{prefix}:client_quotas"),
        }
    }

    /// The Redis hash holding the quotas.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Gives `client` the quota `quota` in rule `rule` (replacing any it had).
    pub async fn set(&self, rule: &str, client: Key, quota: Quota) -> Result<(), RedisStoreError> {
        let field = field(rule, client);
        self.connection
            .query::<()>(
                redis::cmd("HSET")
                    .arg(&self.key)
                    .arg(field)
                    .arg(quota.to_string()),
            )
            .await
    }

    /// Takes `client`'s quota in `rule` away; whether it had one.
    pub async fn remove(&self, rule: &str, client: Key) -> Result<bool, RedisStoreError> {
        let removed: i64 = self
            .connection
            .query(redis::cmd("HDEL").arg(&self.key).arg(field(rule, client)))
            .await?;
        Ok(removed > 0)
    }
}

fn field(rule: &str, client: Key) -> impl ToRedisArgs {
    format!("{rule}:{}", client.to_hex())
}

/// One entry of the hash, if it reads: entries written by hand that do not are skipped.
fn entry(field: &str, value: &str) -> Option<ClientQuota> {
    let (rule, hex) = field.rsplit_once(':')?;
    if hex.len() != 32 || rule.is_empty() {
        return None;
    }
    let client = Key::from_u128(u128::from_str_radix(hex, 16).ok()?);
    let quota = value.parse::<Quota>().ok()?;
    Some(ClientQuota {
        rule: rule.to_owned(),
        client,
        quota,
    })
}

impl ClientQuotas for RedisClientQuotas {
    type Error = RedisStoreError;

    /// Every quota in the hash (`HGETALL`); entries that do not read are left out.
    async fn load(&self) -> Result<Vec<ClientQuota>, RedisStoreError> {
        let all: Vec<(String, String)> = self
            .connection
            .query(redis::cmd("HGETALL").arg(&self.key))
            .await?;
        Ok(all.iter().filter_map(|(f, v)| entry(f, v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_and_nonsense_is_skipped() {
        let client = Key::from_u128(0xfeed);
        let field = format!("per_token:{}", client.to_hex());
        let read = entry(&field, "6000/minute").unwrap();
        assert_eq!(read.rule, "per_token");
        assert_eq!(read.client, client);
        assert_eq!(read.quota, Quota::per_minute(6000).unwrap());
        for (field, value) in [
            ("per_token", "1/s"),
            ("per_token:xyz", "1/s"),
            (":00000000000000000000000000000000", "1/s"),
            ("per_token:0000000000000000000000000000000g", "1/s"),
            ("per_token:00000000000000000000000000000001", "lots"),
            ("per_token:00000000000000000000000000000001", "0/s"),
        ] {
            assert_eq!(entry(field, value), None, "{field} = {value}");
        }
    }
}
