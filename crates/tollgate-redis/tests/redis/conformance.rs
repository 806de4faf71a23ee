//! The core's conformance table, unchanged, against Redis in explicit-time mode.

use tollgate_core::{conformance, ManualClock};
use tollgate_redis::{RedisConnection, RedisStore};

use crate::support::{TestCluster, TestRedis};

fn nonce() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn run(connection: RedisConnection) {
    let clock = ManualClock::new(conformance::BASE);
    // The deny cache answers for non-binding rules without consulting them (see the crate
    // docs), so the table, which checks every rule's figures, runs without it.
    let store = RedisStore::builder(connection)
        .explicit_time(clock.clone())
        .deny_cache(None)
        // Generous: the table is about figures, not timeouts (see faults.rs).
        .budget(std::time::Duration::from_secs(5))
        .build();
    if let Err(failures) = conformance::run(&store, &clock, nonce()).await {
        panic!("conformance failures:\n{failures}");
    }
    assert_eq!(store.stats().degraded, 0);
}

#[tokio::test]
async fn conformance_on_a_connection_manager() {
    let redis = TestRedis::start().await;
    run(RedisConnection::connect(redis.url()).await.unwrap()).await;
}

#[tokio::test]
async fn conformance_on_a_deadpool_pool() {
    let redis = TestRedis::start().await;
    let pool = deadpool_redis::Config::from_url(redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    run(pool.into()).await;
}

#[tokio::test]
async fn conformance_on_a_cluster() {
    let cluster = TestCluster::start().await;
    run(RedisConnection::connect_cluster(cluster.urls())
        .await
        .unwrap())
    .await;
}
