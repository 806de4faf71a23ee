//! The layer in process: an axum hello-world router called through `tower::ServiceExt`, bare,
//! with tollgate (memory store, the two VMArea rules stacked in strict mode) and with
//! tower_governor (per-IP GCRA), on the admit path and under a flood of denied requests.
//!
//! Run: `cargo bench --bench layer`. Compare each variant's ratio to `bare` within a group.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, StatusCode};
use tollgate::presets::vmarea::VmArea;
use tollgate::TokenId;
use tower::ServiceExt;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

fn hello() -> Router {
    Router::new().route("/api/public/v1/vms", get(|| async { "hello" }))
}

fn request() -> Request<Body> {
    let mut request = Request::get("/api/public/v1/vms")
        .header("x-api-key", "bench-key")
        .body(Body::empty())
        .unwrap();
    let peer: SocketAddr = "203.0.113.7:50000".parse().unwrap();
    request.extensions_mut().insert(ConnectInfo(peer));
    request.extensions_mut().insert(TokenId("token-1".into()));
    request
}

/// Both VMArea buckets on every request (strict mode). With `per_minute` huge every request is
/// admitted; with 1, all but the first are denied.
fn tollgate(per_minute: u64) -> Router {
    let layer = VmArea::new()
        .strict(true)
        .per_token(per_minute)
        .per_ip(per_minute)
        .idempotency(None)
        .builder()
        .build()
        .unwrap();
    hello().layer(layer)
}

/// tower_governor's per-IP limiter: admitting everything, or one request and then denying.
fn tower_governor(admit_all: bool) -> Router {
    let mut config = GovernorConfigBuilder::default();
    if admit_all {
        config.per_nanosecond(1).burst_size(u32::MAX);
    } else {
        config.period(Duration::from_secs(3_600)).burst_size(1);
    }
    let config = config.use_headers().finish().unwrap();
    hello().layer(GovernorLayer::new(config))
}

fn bench(c: &mut Criterion, group: &str, variants: &[(&str, Router, StatusCode)]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    for (name, router, expected) in variants {
        // Prime (the denied variants use up their one admission) and check the path measured.
        let status = |router: &Router| {
            let router = router.clone();
            runtime.block_on(async move { router.oneshot(request()).await.unwrap().status() })
        };
        status(router);
        assert_eq!(status(router), *expected, "{name}");
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter(|| {
                let router = router.clone();
                async move { router.oneshot(request()).await.unwrap().status() }
            })
        });
    }
    group.finish();
}

fn layer(c: &mut Criterion) {
    bench(
        c,
        "layer/admitted",
        &[
            ("bare", hello(), StatusCode::OK),
            (
                "tollgate_memory_2_rules",
                tollgate(1_000_000_000),
                StatusCode::OK,
            ),
            ("tower_governor", tower_governor(true), StatusCode::OK),
        ],
    );
    bench(
        c,
        "layer/denied_flood",
        &[
            ("bare", hello(), StatusCode::OK),
            (
                "tollgate_memory_2_rules",
                tollgate(1),
                StatusCode::TOO_MANY_REQUESTS,
            ),
            (
                "tower_governor",
                tower_governor(false),
                StatusCode::TOO_MANY_REQUESTS,
            ),
        ],
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = layer
}
criterion_main!(benches);
