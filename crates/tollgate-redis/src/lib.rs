//! Redis and Redis Cluster store for tollgate: limits shared by every instance of an API.
//!
//! [`RedisStore`] implements [`tollgate_core::Store`] for every [`Algorithm`](tollgate_core::Algorithm),
//! with the same answers as the [`MemoryStore`](tollgate_core::MemoryStore) (the core's
//! conformance table and a randomized comparison with the core run against a real Redis in this
//! crate's tests).
//!
//! ```no_run
//! use tollgate_core::{Check, KeySecret, Quota, Rule, Store};
//! use tollgate_redis::RedisStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let per_token = Rule::builder("per_token", Quota::per_minute(600)?).build()?;
//! let per_ip = Rule::builder("per_ip", Quota::per_minute(100)?).build()?;
//! let secret = KeySecret::DEFAULT; // use your own, the same on every instance
//! let checks = [
//!     Check { rule: &per_token, key: secret.key().part(b"token-id-42").finish() },
//!     Check { rule: &per_ip, key: secret.key().part(b"203.0.113.7").finish() },
//! ];
//! let outcome = store.check(&checks, None).await?; // one round trip, all-or-nothing
//! if !outcome.allowed {
//!     println!("429, retry after {:?}", outcome.retry_after());
//! }
//! # Ok(()) }
//! ```
//!
//! # One round trip per request
//!
//! Every (rule, key) of a request is decided in **one** Lua script call (`FCALL` of a Redis
//! Function on Redis 7, else `EVALSHA`; see the end of this page): decide all, write only if no enforced rule denies, so a request
//! refused by one bucket never burns another. Shadow rules are charged when they admit and never
//! deny. Time is Redis `TIME`, so instances whose clocks disagree still agree.
//!
//! An idempotent [`Replay`](tollgate_core::Replay) is decided in the same call: if its record is
//! live and under its cap, the rules that [honour replays](tollgate_core::Rule::honours_replays)
//! pass it at cost 0 and are not written, while every other rule decides and charges it as
//! usual; the record counts the replay only if the request passes. A request with no rule that
//! honours replays ignores its idempotency key (no record is read or written).
//!
//! # Keys and expiry
//!
//! Rule state lives at `<prefix>:<rule name>:<32 hex digits>` (default prefix `tollgate`; the
//! digest is the request's [`Key`](tollgate_core::Key), a keyed hash made by the HTTP layer), and
//! idempotency records at `<prefix>:~replay:<32 hex digits>`. Values are a format tag, then
//! decimal nanosecond instants and counts only: no raw token, API key or IP ever reaches Redis.
//! Every key is written with a TTL (`PX`) covering exactly the time its state can still affect a
//! decision (rounded up to the millisecond), so idle state expires on its own.
//!
//! | state | value |
//! | --- | --- |
//! | GCRA | `g1:<theoretical arrival time>` |
//! | fixed window | `f1:<window end>:<count>` |
//! | sliding log | `l1:<at>:<cost>,<at>:<cost>,…` (oldest first) |
//! | sliding-window counter | `w1:<window end>:<previous count>:<current count>` |
//! | idempotency record | `r1:<expires at>:<replays taken>` |
//! | fixed window, with [`fixed_window_counters`](RedisStoreBuilder::fixed_window_counters) | `<count>` (a plain integer) at `<prefix>:<rule name>:<32 hex digits>:<window index>` |
//!
//! The tag names the algorithm and the format version (`1`); a later format bumps the digit.
//!
//! # State it cannot read
//!
//! A key's value is read only if it is exactly the rule's format: its tag, instants of 1 to 19
//! digits, counts of at most 2^53, no instant further ahead of now than twice what the rule can
//! write plus a minute of clock slack. Anything else is treated as **absent** and overwritten
//! when the request is charged: another algorithm's state (a deploy that changes a rule's
//! algorithm keeps its key), another format version (an older or newer tollgate-redis, or the
//! untagged values of tollgate-redis 0.1), garbage written by hand, or a hash, list, set, zset
//! or stream at the key (reads go through `redis.pcall`, so `WRONGTYPE` is data, not an error).
//! Such state is one key's problem: that key restarts from a fresh bucket, every other key is
//! limited exactly, and no Redis error is raised, so the failure policy and the circuit breaker
//! are not involved. An unreadable idempotency record is no record: the request is charged and
//! records its key anew.
//!
//! Two consequences to plan for. Upgrading from the untagged format resets every live limit
//! once (each bucket starts fresh, at most one window's worth of extra requests). During a
//! rolling deploy that changes a rule's algorithm, old and new instances reset each other's
//! state on every write; rename the rule (its keys change) to keep them apart.
//!
//! # Exact arithmetic in Lua
//!
//! Lua's numbers are doubles, exact for integers below 2^53, while an instant in nanoseconds is
//! ~1.7·10^18. The script never holds an instant as one number: it keeps (seconds, nanoseconds)
//! pairs and computes differences from now, which the core bounds below 2^53
//! ([`MAX_PERIOD_NANOS`](tollgate_core::MAX_PERIOD_NANOS),
//! [`MAX_BURST_SPAN_NANOS`](tollgate_core::MAX_BURST_SPAN_NANOS)). Window alignment
//! (`now mod period`) is `(s mod P)·10^9 + n` for a period of whole seconds `P`, else a mulmod
//! (direct while the product stays below 2^53, by doubling beyond); the sliding-window
//! counter's `floor`/`ceil(a·b/c)` is one division while `a·b` stays below 2^53, else a binary
//! long multiplication whose remainder stays below `2c`. The script returns every figure
//! (remaining, reset, retry) as an integer below 2^53, exact.
//!
//! # Connections
//!
//! [`RedisConnection`] takes what an application already has: a
//! [`ConnectionManager`](redis::aio::ConnectionManager) (the default of
//! [`RedisStore::connect`]), a [`MultiplexedConnection`](redis::aio::MultiplexedConnection), a
//! [`deadpool_redis::Pool`], or a Redis Cluster connection. Measured on 2 cores (Redis 7.0 on the
//! same machine, one GCRA check per request, release build; the test `bench_pool_vs_multiplexed`
//! of `tests/redis`), checks per second:
//!
//! | callers | ConnectionManager | MultiplexedConnection | deadpool Pool (default size 8) | deadpool Pool (size = callers) |
//! | --- | --- | --- | --- | --- |
//! | 1 | 13 000 | 20 700 | 11 000 | 9 700 |
//! | 16 | 46 900 | 48 300 | 10 800 | 24 100 |
//! | 256 | 72 100 | 72 900 | 10 200 | 34 700 |
//!
//! (An earlier run on a busier machine gave about half these figures, in the same order.)
//! One multiplexed socket pipelines every concurrent request; each `pool.get()` recycles its
//! connection with an extra round trip. Hence the default: a connection manager (multiplexed,
//! and it reconnects by itself).
//!
//! # Redis Cluster
//!
//! A request's keys are grouped by hash slot; each slot is decided by one script call, all
//! slots in parallel. If any slot denies, the slots that admitted are **refunded** by a second
//! script that reverses exactly their charge (GCRA: the TAT moves back by `cost × T`; fixed
//! window and sliding-window counter: the count of the charge's window goes down by `cost`;
//! sliding log: the charge's entry loses `cost`). Between the charge and its refund, about one
//! round trip, the charged units are held: a concurrent request may be denied for want of a unit
//! that is about to be given back (never the reverse: no request is admitted beyond the limit).
//! A refund is lost only if Redis fails in that window; the charge then stays until its state
//! expires.
//!
//! Idempotency records may live on another slot, so a replay takes three steps: the free replay
//! is taken from the record first (if it is live and under its cap), then every slot decides,
//! the rules that honour replays at cost 0 and unwritten, the others charged as usual. If any
//! slot denies, the charges are refunded and the taken replay is given back. A replay given
//! back too late for a concurrent repeat of the same request, or lost to a Redis failure, only
//! means that a repeat is charged: the client may be charged once more than it should, never
//! less. A request that passed without a free replay then records its key (unless a live
//! record exists).
//! A prefix with a hash tag (e.g. `{tollgate}`) puts every key on one slot: one atomic call
//! again, at the price of keeping all rate-limit state on one node.
//!
//! # Fixed windows without the script
//!
//! [`RedisStoreBuilder::fixed_window_counters`] decides fixed windows with plain counters:
//! one pipeline of `SET <key> 0 NX PX <ttl>` + `INCRBY <key> <cost>` per window, a key per
//! window, this process's clock for the window, and a `DECRBY` refund (one more round trip)
//! when the request is denied. A quarter to two fifths of the script's Redis CPU per VMArea
//! decision (`BENCHMARKS.md`), never over-admission, at the price of over-denial while a denied
//! request's charge is in flight and window edges that move with the instances' clock skew.
//! Off by default; its rustdoc says exactly what it trades.
//!
//! # Local deny cache
//!
//! Once Redis says a (rule, key) is denied until `t`, this process denies requests that include
//! that pair until `t` without asking Redis, with the shrinking `Retry-After` Redis would give.
//! Bounded (10 000 denials by default, [`RedisStoreBuilder::deny_cache`]). With an idempotency
//! key, the rules that [honour replays](tollgate_core::Rule::honours_replays) are not looked up
//! (the request may be a free replay there); every other rule charges a replay like any
//! request, so its cached denial still answers. The rules of a request denied locally that are
//! not in the cache are not consulted: they report an admission at full capacity.
//!
//! Concurrent misses share one call: a request that misses the cache while another request of
//! this process is asking Redis about one of its (rule, key) pairs waits for that answer (within
//! its budget) and is denied locally if it was a denial. A cold flood of 256 concurrent callers
//! from one denied key costs one Redis call (the test
//! `a_cold_flood_from_a_denied_key_shares_one_redis_call`). When that answer admits, the waiting
//! requests then ask Redis themselves, one round trip later than they would have;
//! [`RedisStoreStats::coalesced`] counts the requests that waited.
//!
//! # When Redis fails
//!
//! Each decision has a time budget (default 50 ms, connection checkout included). On an error or
//! an exhausted budget the [`FailurePolicy`] decides: fail open (admit; no binding rule, so no
//! made-up headers), fail closed ([`RedisStoreError`]; the HTTP layer answers 503 with a JSON
//! body), or fall back to a local memory store with the same rules, each limit optionally divided
//! by the expected number of instances. After 5 consecutive failures a circuit breaker stops
//! calling Redis for 250 ms, then lets one probe through, and closes on success
//! ([`BreakerConfig`]). Every degraded decision is counted ([`RedisStore::stats`]) and logged with
//! a rate-limited `tracing` warning.
//!
//! Only unavailability counts towards the breaker ([`RedisStoreError::is_unavailable`]):
//! connection refused, lost or timed out, an exhausted budget, a pool that cannot connect, and
//! the answers `LOADING`, `BUSY`, `MASTERDOWN`, `READONLY`, `CLUSTERDOWN`, `TRYAGAIN` and `OOM`.
//! An error from a Redis that answered — the script raised
//! ([`RedisStoreError::Script`]; a bug or an incompatible script version), an unexpected reply,
//! a refused command such as a missing ACL permission ([`RedisStoreError::Refused`]) — is
//! counted in [`RedisStoreStats::script_errors`] and logged as such, and the request is decided
//! by the failure policy all the same (there is no other answer), but the breaker stays closed:
//! what goes wrong for one request does not switch limiting off for every key. Messages never
//! show a password: use [`redact_url`] to print a Redis URL yourself. A request that timed out may still be executed by Redis
//! once it answers again (it was sent): its charge then stands.
//!
//! # Modules
//!
//! - `store`: [`RedisStore`] and its builder: the orchestration of one decision; within it,
//!   `store::cluster` (the exchange across hash slots, refunds) and `store::fallback` (the local
//!   store of [`FailurePolicy::Fallback`] and its scaled rules).
//! - `script` (and `tollgate.lua`): the Lua script and its wire format; `script::Call` has one
//!   constructor per mode.
//! - `connection`: [`RedisConnection`], the ways to reach Redis.
//! - `deny_cache`: the bounded local deny cache.
//! - `policy`: [`FailurePolicy`], the circuit breaker, the rate-limited warning.
//! - `stats`: [`RedisStoreStats`].
//! - `error`: [`RedisStoreError`].
//!
//! Requires Redis 6.0 or later (`SET … KEEPTTL`); tested with 7.0. On Redis 7 the script runs
//! as a Redis Function ([`FUNCTION`]: `FUNCTION LOAD` once per primary, then one `FCALL` per
//! decision), which costs Redis about a third less CPU per decision than `EVALSHA`, which runs
//! the script's whole body, its helpers' definitions included, on every call. Where Functions
//! are refused (Redis 6: `unknown command`; an ACL without `FCALL` or `FUNCTION`: `NOPERM`) the
//! store runs the same code by `EVALSHA` ([`LUA_SOURCE`]) from the first refusal on. A library
//! missing on the node that answers (a restart without persistence, `FUNCTION FLUSH`, a new
//! primary) is loaded again and the call retried, as `EVALSHA` does on `NOSCRIPT`.

#![warn(missing_docs)]

mod client_quotas;
mod connection;
mod deny_cache;
mod error;
mod policy;
mod script;
mod stats;
mod store;

pub use client_quotas::RedisClientQuotas;
pub use connection::{redact_url, RedisConnection};
pub use error::RedisStoreError;
pub use policy::{BreakerConfig, FailurePolicy};
pub use script::{Library, FUNCTION, LUA_SOURCE};
pub use stats::RedisStoreStats;
pub use store::{
    RedisStore, RedisStoreBuilder, DEFAULT_BUDGET, DEFAULT_DENY_CACHE_CAPACITY, DEFAULT_PREFIX,
};
