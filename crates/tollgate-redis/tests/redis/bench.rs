//! Pool against multiplexed connection: a quick throughput run, by hand (release build):
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-redis cargo test --release -p tollgate-redis --test redis \
//!     bench_pool_vs_multiplexed -- --ignored --nocapture
//! ```
//!
//! Each caller checks one GCRA rule on its own key in a loop (every request admitted, one
//! script call each), for 2 s per configuration, deny cache off.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tollgate_core::{Check, KeySecret, Quota, Rule, Store};
use tollgate_redis::{FailurePolicy, RedisConnection, RedisStore};

use crate::support::TestRedis;

async fn run(
    store: &RedisStore,
    rule: &Rule,
    callers: usize,
    run_for: Duration,
) -> (f64, Duration, Duration) {
    let start = Instant::now();
    let per_caller = join_all((0..callers).map(|c| async move {
        let key = KeySecret::DEFAULT
            .key()
            .part(&(c as u64).to_le_bytes())
            .finish();
        let checks = [Check { rule, key }];
        let mut latencies = Vec::new();
        while start.elapsed() < run_for {
            let t = Instant::now();
            let outcome = store
                .check(&checks, None)
                .await
                .expect("no failure in the benchmark");
            assert!(outcome.allowed);
            latencies.push(t.elapsed());
        }
        latencies
    }))
    .await;
    let elapsed = start.elapsed();
    let mut all: Vec<Duration> = per_caller.into_iter().flatten().collect();
    all.sort();
    let ops = all.len() as f64 / elapsed.as_secs_f64();
    (ops, all[all.len() / 2], all[all.len() * 99 / 100])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand in release mode"]
async fn bench_pool_vs_multiplexed() {
    let redis = TestRedis::start().await;
    let rule = Rule::builder("bench", Quota::per_second(1_000_000_000).unwrap())
        .build()
        .unwrap();
    let run_for = Duration::from_secs(2);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut rows = Vec::new();
    for callers in [1usize, 16, 256] {
        let pool_default = deadpool_redis::Config::from_url(redis.url())
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let mut config = deadpool_redis::Config::from_url(redis.url());
        config.pool = Some(deadpool_redis::PoolConfig::new(callers.max(1)));
        let pool_sized = config
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .unwrap();
        let backends: Vec<(&str, RedisConnection)> = vec![
            (
                "ConnectionManager (default)",
                RedisConnection::connect(redis.url()).await.unwrap(),
            ),
            (
                "MultiplexedConnection",
                client
                    .get_multiplexed_async_connection()
                    .await
                    .unwrap()
                    .into(),
            ),
            ("deadpool Pool (default size)", pool_default.into()),
            ("deadpool Pool (size = callers)", pool_sized.into()),
        ];
        for (name, connection) in backends {
            let store = RedisStore::builder(connection)
                .budget(Duration::from_secs(5))
                .failure_policy(FailurePolicy::FailClosed)
                .deny_cache(None)
                .build();
            store.load_script().await.unwrap();
            // Warm up (pool connections, script cache).
            run(&store, &rule, callers, Duration::from_millis(200)).await;
            let (ops, p50, p99) = run(&store, &rule, callers, run_for).await;
            rows.push(format!(
                "| {name} | {callers} | {ops:.0} | {p50:.0?} | {p99:.0?} |"
            ));
        }
    }
    println!("| connection | callers | checks/s | p50 | p99 |");
    println!("| --- | --- | --- | --- | --- |");
    for row in rows {
        println!("{row}");
    }
}
