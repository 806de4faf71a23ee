//! The Redis store side by side with its peers, against a real Redis:
//!
//! - `redis/decisions`: `RedisStore` decisions per second at 1, 16 and 256 concurrent callers,
//!   against a raw redis-rs `FCALL` of the same Redis Function with the same arguments at the
//!   same concurrency (the ceiling for a Rust client).
//! - `redis/connections`: the same store on a `MultiplexedConnection`, a `ConnectionManager` (the
//!   default) and `deadpool_redis::Pool`s (default size, and one connection per caller).
//! - `redis/deny_flood`: a flood of denied requests from one key, deny cache on and off. Prints
//!   the Redis round trips and commands per denied request (criterion cannot report those).
//!
//! Run: `cargo bench --bench redis`. Redis comes from `REDIS_URL`, else a `redis-server` found
//! on `PATH` is started on a free 127.0.0.1 port (and killed at the end); with neither, the
//! bench says so and exits 0. Redis shares the machine with the bench: compare ratios within a
//! group, from the same run.
//!
//! Criterion measures one variant after the other, so a machine whose load changes in between
//! skews their ratio. Before each concurrency of `redis/decisions` and `redis/connections`, the
//! bench therefore also prints a **paired** comparison (`paired ...` lines): one batch of each
//! variant in turn, 20 times (`TOLLGATE_BENCH_PAIRS`), median per variant and its ratio to the
//! first. Quote ratios from those lines.
//!
//! # What is measured
//!
//! One batch is [`BATCH`] = 2048 decisions spread evenly over C callers, each a Tokio task on a
//! multi-thread runtime (one worker per core), each checking one GCRA rule on **its own key**
//! (1,000,000,000 per second: every request admitted, so every decision is one script call that
//! reads and writes its key). Criterion reports the time per batch and decisions per second.
//!
//! # The raw peer's arguments
//!
//! The store builds its `FCALL` arguments in a private module (`script.rs`). The raw peer
//! rebuilds exactly the same call from public parts: the function is
//! [`tollgate_redis::FUNCTION`]'s (loaded by the store's `load_script`), the key is
//! [`RedisStore::redis_key`] of the same rule and key, and `ARGV` follows the wire format
//! documented at the top of `tollgate.lua`: `check`, `""` `""` (use Redis `TIME`), `1` rule, `0` `0` `0` (no idempotency record),
//! `""` `""` (no refund), then `g00` (GCRA, enforced, no replays), emission interval (ns),
//! burst, cost. The bench asserts that both replies have the store's length and say
//! "allowed". The raw peer prepares its command once per caller and sends it on one shared
//! `MultiplexedConnection`; the store builds its invocation per decision, as it does in
//! production.

use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use tollgate::{Check, Key, KeySecret, Quota, Rule, Store};
use tollgate_redis::{FailurePolicy, RedisConnection, RedisStore, FUNCTION};

/// Decisions per measured batch (divisible by every concurrency).
const BATCH: usize = 2048;
/// Concurrent callers.
const CALLERS: [usize; 3] = [1, 16, 256];
/// Callers in the deny flood (criterion); the cold figures are printed for every concurrency.
const FLOOD_CALLERS: usize = 16;
/// Key prefix of everything this bench writes.
const PREFIX: &str = "tollgate-bench";

const SKIP: &str =
    "skipping Redis benches: set REDIS_URL or install redis-server (apt-get install redis-server)";

/// A Redis to measure against: `REDIS_URL`, or a `redis-server` child killed on drop.
struct Redis {
    url: String,
    child: Option<Child>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redis_server_on_path() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn find_redis() -> Option<Redis> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        println!("Redis: REDIS_URL={url}");
        return Some(Redis { url, child: None });
    }
    if !redis_server_on_path() {
        return None;
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port();
    let dir = std::env::temp_dir().join(format!("tollgate-redis-bench-{port}"));
    let _ = std::fs::create_dir_all(&dir);
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    println!(
        "Redis: redis-server (pid {}) on 127.0.0.1:{port}",
        child.id()
    );
    Some(Redis {
        url: format!("redis://127.0.0.1:{port}"),
        child: Some(child),
    })
}

async fn wait_ready(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let attempt = async {
            let mut conn = multiplexed(url).await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        if let Ok(Some(pong)) = tokio::time::timeout(Duration::from_millis(500), attempt).await {
            if pong == "PONG" {
                return;
            }
        }
        assert!(Instant::now() < deadline, "Redis at {url} does not answer");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn multiplexed(url: &str) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

async fn manager(url: &str) -> ConnectionManager {
    redis::Client::open(url)
        .unwrap()
        .get_connection_manager()
        .await
        .expect("connect to Redis")
}

fn pool(url: &str, size: Option<usize>) -> deadpool_redis::Pool {
    let mut config = deadpool_redis::Config::from_url(url);
    if let Some(size) = size {
        config.pool = Some(deadpool_redis::PoolConfig::new(size));
    }
    config
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .expect("a deadpool-redis pool")
}

/// A store as the bench uses it: any failure is an error (so that nothing is silently admitted
/// by the failure policy), and a budget long enough that 256 queued callers never exhaust it.
fn store(connection: impl Into<RedisConnection>, deny_cache: bool) -> RedisStore {
    let builder = RedisStore::builder(connection)
        .prefix(PREFIX)
        .budget(Duration::from_secs(5))
        .failure_policy(FailurePolicy::FailClosed);
    if deny_cache {
        builder.build()
    } else {
        builder.deny_cache(None).build()
    }
}

fn caller_key(caller: usize) -> Key {
    KeySecret::DEFAULT
        .key()
        .part(b"bench-caller")
        .part(&(caller as u64).to_le_bytes())
        .finish()
}

/// `callers` tasks, each running `task(i)`, joined.
async fn batch<F, Fut>(callers: usize, task: F)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handles: Vec<_> = (0..callers).map(|i| tokio::spawn(task(i))).collect();
    for handle in handles {
        handle.await.expect("a caller task panicked");
    }
}

/// One batch of admitted decisions through the store, each caller on its own key.
async fn store_batch(store: &RedisStore, rule: &Arc<Rule>, callers: usize) {
    let per_caller = BATCH / callers;
    batch(callers, |i| {
        let store = store.clone();
        let rule = Arc::clone(rule);
        async move {
            let checks = [Check {
                rule: &rule,
                key: caller_key(i),
            }];
            for _ in 0..per_caller {
                let outcome = store.check(&checks, None).await.expect("a decision");
                assert!(outcome.allowed);
            }
        }
    })
    .await;
}

/// The store's `FCALL` for one GCRA rule on `key`, built by hand (see the module docs).
fn raw_fcall(store: &RedisStore, rule: &Rule, key: Key) -> redis::Cmd {
    let quota = rule.quota();
    let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap();
    let mut cmd = redis::cmd("FCALL");
    cmd.arg(&FUNCTION.name)
        .arg(1)
        .arg(store.redis_key(rule, key))
        .arg("check")
        .arg("")
        .arg("")
        .arg(1)
        .arg("none")
        .arg(0)
        .arg(0)
        .arg("")
        .arg("")
        .arg("g00")
        .arg(nanos(quota.emission_interval()))
        .arg(quota.burst())
        .arg(rule.cost());
    cmd
}

/// One batch of the raw script call, each caller on its own key.
async fn raw_batch(conn: &MultiplexedConnection, cmds: &Arc<Vec<redis::Cmd>>, callers: usize) {
    let per_caller = BATCH / callers;
    batch(callers, |i| {
        let mut conn = conn.clone();
        let cmds = Arc::clone(cmds);
        async move {
            for _ in 0..per_caller {
                let reply: Vec<i64> = cmds[i].query_async(&mut conn).await.expect("FCALL");
                assert!(reply.len() == 8 && reply[2] == 1, "{reply:?}");
            }
        }
    })
    .await;
}

/// Times `iters` runs of `run`.
fn timed<Fut: Future<Output = ()>>(
    runtime: &tokio::runtime::Runtime,
    iters: u64,
    run: impl Fn() -> Fut,
) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            run().await;
        }
        start.elapsed()
    })
}

/// One batch of a variant, as a boxed future (variants differ in type).
type Batch<'a> = Box<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + 'a>> + 'a>;

/// Alternating batches per variant in the paired comparisons: `TOLLGATE_BENCH_PAIRS`, else 1 in
/// criterion's test mode (`--test`), else 20.
fn pair_rounds() -> usize {
    if let Some(n) = std::env::var("TOLLGATE_BENCH_PAIRS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        return n;
    }
    if std::env::args().any(|a| a == "--test") {
        1
    } else {
        20
    }
}

/// Redis's CPU time so far (`used_cpu_user` + `used_cpu_sys` of `INFO cpu`), in seconds.
async fn redis_cpu(admin: &mut MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(admin)
        .await
        .expect("INFO cpu");
    info.lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

/// A paired comparison, robust to a machine whose load drifts (criterion measures one
/// variant after the other): one batch of each variant in turn (order reversed every other
/// round), `pair_rounds()` times; prints each variant's median batch as decisions per second
/// and as a ratio to the first variant's, and the Redis CPU time each decision cost (mean).
fn paired(
    runtime: &tokio::runtime::Runtime,
    url: &str,
    title: &str,
    variants: &[(&str, Batch<'_>)],
) {
    let rounds = pair_rounds();
    let mut times: Vec<Vec<Duration>> = vec![Vec::with_capacity(rounds); variants.len()];
    let mut cpu = vec![0.0f64; variants.len()];
    runtime.block_on(async {
        let mut admin = multiplexed(url).await.expect("connect to Redis");
        for round in 0..rounds {
            let mut order: Vec<usize> = (0..variants.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let before = redis_cpu(&mut admin).await;
                let start = Instant::now();
                (variants[i].1)().await;
                times[i].push(start.elapsed());
                cpu[i] += redis_cpu(&mut admin).await - before;
            }
        }
    });
    let rates: Vec<f64> = times
        .iter_mut()
        .map(|t| {
            t.sort();
            BATCH as f64 / t[t.len() / 2].as_secs_f64()
        })
        .collect();
    let figures: Vec<String> = variants
        .iter()
        .zip(&rates)
        .zip(&cpu)
        .map(|(((name, _), rate), cpu)| {
            format!(
                "{name} {rate:.0}/s ({:.3}; Redis CPU {:.1} µs/decision)",
                rate / rates[0],
                cpu * 1e6 / (rounds * BATCH) as f64
            )
        })
        .collect();
    println!(
        "paired {title}: {} [median of {rounds} alternating batches of {BATCH}; ratio to {}]",
        figures.join(", "),
        variants[0].0
    );
}

fn admit_all_rule() -> Arc<Rule> {
    Arc::new(
        Rule::builder("admit", Quota::per_second(1_000_000_000).unwrap())
            .build()
            .unwrap(),
    )
}

fn assert_healthy(name: &str, store: &RedisStore) {
    let stats = store.stats();
    assert_eq!(
        (stats.redis_failures, stats.degraded),
        (0, 0),
        "{name}: {stats:?}"
    );
}

/// `RedisStore` against raw `FCALL`, same function, arguments, keys and concurrency.
fn decisions(c: &mut Criterion, runtime: &tokio::runtime::Runtime, url: &str) {
    let rule = admit_all_rule();
    let (store, conn) = runtime.block_on(async {
        let store = store(RedisConnection::connect(url).await.unwrap(), true);
        store.load_script().await.unwrap();
        (store, multiplexed(url).await.unwrap())
    });
    let cmds: Arc<Vec<redis::Cmd>> = Arc::new(
        (0..*CALLERS.iter().max().unwrap())
            .map(|i| raw_fcall(&store, &rule, caller_key(i)))
            .collect(),
    );
    // Same reply shape as the store expects.
    runtime.block_on(raw_batch(&conn, &cmds, 16));

    let mut group = c.benchmark_group("redis/decisions");
    group
        .throughput(Throughput::Elements(BATCH as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    for callers in CALLERS {
        let mut compared = false;
        group.bench_function(BenchmarkId::new("tollgate_store", callers), |b| {
            if !compared {
                compared = true;
                paired(
                    runtime,
                    url,
                    &format!("redis/decisions, {callers} callers"),
                    &[
                        (
                            "raw_fcall",
                            Box::new(|| Box::pin(raw_batch(&conn, &cmds, callers))),
                        ),
                        (
                            "tollgate_store",
                            Box::new(|| Box::pin(store_batch(&store, &rule, callers))),
                        ),
                    ],
                );
            }
            b.iter_custom(|iters| timed(runtime, iters, || store_batch(&store, &rule, callers)))
        });
        group.bench_function(BenchmarkId::new("raw_fcall", callers), |b| {
            b.iter_custom(|iters| timed(runtime, iters, || raw_batch(&conn, &cmds, callers)))
        });
    }
    group.finish();
    assert_healthy("tollgate_store", &store);
}

/// The same store on each kind of connection.
fn connections(c: &mut Criterion, runtime: &tokio::runtime::Runtime, url: &str) {
    let rule = admit_all_rule();
    let mut group = c.benchmark_group("redis/connections");
    group
        .throughput(Throughput::Elements(BATCH as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    for callers in CALLERS {
        let default_pool = pool(url, None);
        let default_size = default_pool.status().max_size;
        let stores: Vec<(String, RedisStore)> = runtime.block_on(async {
            vec![
                (
                    "multiplexed".to_owned(),
                    store(multiplexed(url).await.unwrap(), false),
                ),
                (
                    "connection_manager".to_owned(),
                    store(manager(url).await, false),
                ),
                (
                    format!("pool_default_{default_size}"),
                    store(default_pool, false),
                ),
                (
                    "pool_sized_callers".to_owned(),
                    store(pool(url, Some(callers)), false),
                ),
            ]
        });
        for (_, store) in &stores {
            runtime.block_on(async {
                store.load_script().await.unwrap();
                // Fill the pools.
                store_batch(store, &rule, callers).await;
            });
        }
        let mut compared = false;
        for (name, store) in &stores {
            group.bench_function(BenchmarkId::new(name, callers), |b| {
                if !compared {
                    compared = true;
                    let variants: Vec<(&str, Batch<'_>)> = stores
                        .iter()
                        .map(|(name, store)| {
                            let run: Batch<'_> =
                                Box::new(|| Box::pin(store_batch(store, &rule, callers)));
                            (name.as_str(), run)
                        })
                        .collect();
                    paired(
                        runtime,
                        url,
                        &format!("redis/connections, {callers} callers"),
                        &variants,
                    );
                }
                b.iter_custom(|iters| timed(runtime, iters, || store_batch(store, &rule, callers)))
            });
            assert_healthy(name, store);
        }
    }
    group.finish();
}

/// Redis's command counters: (script calls, `FCALL` or `EVALSHA`; every command but INFO).
async fn command_stats(admin: &mut MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .expect("INFO commandstats");
    let (mut evalsha, mut all) = (0, 0);
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls: u64 = rest
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if name == "info" {
            continue;
        }
        if name == "fcall" || name == "evalsha" {
            evalsha += calls;
        }
        all += calls;
    }
    (evalsha, all)
}

/// One batch of denied requests from one key.
async fn flood_batch(store: &RedisStore, rule: &Arc<Rule>, key: Key, callers: usize) {
    let per_caller = BATCH / callers;
    batch(callers, |_| {
        let store = store.clone();
        let rule = Arc::clone(rule);
        async move {
            let checks = [Check { rule: &rule, key }];
            for _ in 0..per_caller {
                let outcome = store.check(&checks, None).await.expect("a decision");
                assert!(!outcome.allowed);
            }
        }
    })
    .await;
}

/// Round trips and commands per denied request for a fresh store (empty deny cache) facing one
/// batch: `callers` concurrent callers, one key, already denied in Redis.
fn print_cold(runtime: &tokio::runtime::Runtime, url: &str, rule: &Arc<Rule>, key: Key, on: bool) {
    runtime.block_on(async {
        let mut admin = multiplexed(url).await.unwrap();
        for callers in CALLERS {
            let store = store(RedisConnection::connect(url).await.unwrap(), on);
            store.load_script().await.unwrap();
            let (evalsha0, all0) = command_stats(&mut admin).await;
            let start = Instant::now();
            flood_batch(&store, rule, key, callers).await;
            let elapsed = start.elapsed();
            let (evalsha1, all1) = command_stats(&mut admin).await;
            let n = BATCH as f64;
            println!(
                "deny_flood cold, deny cache {}, {callers:>3} callers: {:.4} Redis round trips per \
                 denied request (store.stats().redis_calls = {} for {BATCH}; INFO FCALL/EVALSHA calls \
                 +{}), {:.4} Redis commands per denied request incl. the script's own (+{}), \
                 {:.0} ns per denied request",
                if on { "on " } else { "off" },
                store.stats().redis_calls as f64 / n,
                store.stats().redis_calls,
                evalsha1 - evalsha0,
                (all1 - all0) as f64 / n,
                all1 - all0,
                elapsed.as_nanos() as f64 / n,
            );
        }
    });
}

/// A flood of denied requests from one key, deny cache on and off.
fn deny_flood(c: &mut Criterion, runtime: &tokio::runtime::Runtime, url: &str) {
    // One request an hour: after the first, every request from the key is denied for an hour.
    let rule = Arc::new(
        Rule::builder("flood", Quota::per_hour(1).unwrap())
            .build()
            .unwrap(),
    );
    let key = KeySecret::DEFAULT.key().part(b"bench-flooder").finish();
    let mut admin = runtime.block_on(async {
        let mut admin = multiplexed(url).await.unwrap();
        let priming = store(RedisConnection::connect(url).await.unwrap(), false);
        let _: () = redis::cmd("DEL")
            .arg(priming.redis_key(&rule, key))
            .query_async(&mut admin)
            .await
            .unwrap();
        let checks = [Check { rule: &rule, key }];
        assert!(priming.check(&checks, None).await.unwrap().allowed);
        assert!(!priming.check(&checks, None).await.unwrap().allowed);
        admin
    });

    let mut group = c.benchmark_group("redis/deny_flood");
    group
        .throughput(Throughput::Elements(BATCH as u64))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    for on in [true, false] {
        let name = if on {
            "deny_cache_on"
        } else {
            "deny_cache_off"
        };
        let store = runtime.block_on(async {
            let store = store(RedisConnection::connect(url).await.unwrap(), on);
            store.load_script().await.unwrap();
            store
        });
        let decisions = AtomicU64::new(0);
        let elapsed = AtomicU64::new(0);
        // Taken once the cold runs are done, so that they are not counted.
        let mut baseline = None;
        group.bench_function(BenchmarkId::new(name, FLOOD_CALLERS), |b| {
            if baseline.is_none() {
                print_cold(runtime, url, &rule, key, on);
                baseline = Some(runtime.block_on(command_stats(&mut admin)));
            }
            b.iter_custom(|iters| {
                let t = timed(runtime, iters, || {
                    flood_batch(&store, &rule, key, FLOOD_CALLERS)
                });
                decisions.fetch_add(iters * BATCH as u64, Ordering::Relaxed);
                elapsed.fetch_add(t.as_nanos() as u64, Ordering::Relaxed);
                t
            })
        });
        let n = decisions.load(Ordering::Relaxed);
        if let (Some((evalsha0, all0)), true) = (baseline, n > 0) {
            let (evalsha1, all1) = runtime.block_on(command_stats(&mut admin));
            let stats = store.stats();
            println!(
                "deny_flood steady, deny cache {}, {FLOOD_CALLERS} callers, {n} denied requests: \
                 {:.6} Redis round trips per denied request (store.stats().redis_calls = {}, \
                 deny_cache_hits = {}; INFO FCALL/EVALSHA calls +{}), {:.6} Redis commands per denied \
                 request incl. the script's own (+{}), {:.0} ns per denied request",
                if on { "on " } else { "off" },
                stats.redis_calls as f64 / n as f64,
                stats.redis_calls,
                stats.deny_cache_hits,
                evalsha1 - evalsha0,
                (all1 - all0) as f64 / n as f64,
                all1 - all0,
                elapsed.load(Ordering::Relaxed) as f64 / n as f64,
            );
            assert_healthy(name, &store);
        }
    }
    group.finish();
    runtime.block_on(async {
        let _: () = redis::cmd("DEL")
            .arg(format!("{PREFIX}:flood:{}", key.to_hex()))
            .query_async(&mut admin)
            .await
            .unwrap();
    });
}

fn main() {
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let Some(redis) = find_redis() else {
        println!("{SKIP}");
        return;
    };
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(wait_ready(&redis.url));
    println!(
        "{BATCH} decisions per batch, Tokio multi-thread runtime with {workers} workers, Redis on \
         the same machine"
    );
    decisions(&mut criterion, &runtime, &redis.url);
    connections(&mut criterion, &runtime, &redis.url);
    deny_flood(&mut criterion, &runtime, &redis.url);
    criterion.final_summary();
    drop(runtime);
    drop(redis);
}
