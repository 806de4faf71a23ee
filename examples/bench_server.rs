//! The server `scripts/http-bench.sh` loads with wrk: one small route, with or without a rate
//! limiter in front of it.
//!
//! ```sh
//! cargo build --release -p tollgate-bench-server
//! target/release/bench_server memory        # or BENCH_MODE=memory
//! wrk -t1 -c64 -d5s --latency -H 'x-api-key: bench' http://127.0.0.1:3000/api/public/v1/vms
//! ```
//!
//! The scripts build it as that package (`crates/bench-server`, the same file), so tollgate has
//! its default features only: as the root crate's example (`cargo run --release --example
//! bench_server`) it gets every feature the crate's own tests enable, `metrics` among them,
//! which adds two clock reads and a histogram sample per request.
//!
//! Modes (first argument, else `BENCH_MODE`, else `bare`):
//!
//! - `bare`: axum hello world, no limiter.
//! - `memory`: tollgate, memory store, the two VMArea buckets stacked
//!   (`VmArea::new().strict(true)`: per token and per IP on every request, fixed windows,
//!   idempotent replays on as in the preset), each at 1,000,000,000 requests per minute so that
//!   the load is admitted.
//! - `ip`: tollgate, memory store, one per-IP GCRA limit at 1,000,000,000 per minute with the
//!   `X-RateLimit-*` headers: the same work as `governor`.
//! - `redis`: the same limiter as `memory` on `RedisStore` (`REDIS_URL`, default
//!   `redis://127.0.0.1:6379`; a `ConnectionManager`, deny cache on: the store's defaults).
//! - `redis-counters`: `redis` with `fixed_window_counters(true)`: the two windows as `INCRBY`
//!   counters in one pipeline instead of the script.
//! - `governor`: tower_governor per client IP (its `PeerIpKeyExtractor`, with its headers), 1
//!   per nanosecond with a burst of 2^32-1, so that the load is admitted.
//! - `flood`: tollgate, memory store, one per-IP limit of 1 per day: after the first request,
//!   every request is a 429 (a flood of denied requests).
//! - `governor-flood`: tower_governor per client IP, a burst of 1 and 1 per day: the same flood.
//!
//! Every mode has the same router and the same stand-in auth layer (a `tower` `map_request` that
//! turns a non-empty `x-api-key` into the [`TokenId`] extension the per-token bucket is keyed
//! by), so the modes differ by the limiter only. It listens on `TOLLGATE_ADDR` (default
//! `127.0.0.1:3000`) with `into_make_service_with_connect_info::<SocketAddr>()`, so that the
//! per-IP buckets see the peer address.

use std::net::SocketAddr;

use axum::extract::Request;
use axum::routing::get;
use axum::Router;
use tollgate::presets::vmarea::VmArea;
use tollgate::{KeyPart, Limit, RateLimitLayer, TokenId};
use tower::ServiceBuilder;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::GovernorLayer;

/// Requests per minute of each VMArea bucket: far above what one machine can send.
const PER_MINUTE: u64 = 1_000_000_000;

fn app() -> Router {
    Router::new().route("/api/public/v1/vms", get(|| async { "hello" }))
}

/// The stand-in auth layer: a non-empty `x-api-key` is a valid token; its id is the key itself
/// (a real app would look it up).
fn authenticate(mut request: Request) -> Request {
    let token = request
        .headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
        .map(TokenId::from);
    if let Some(token) = token {
        request.extensions_mut().insert(token);
    }
    request
}

fn vmarea() -> tollgate::RateLimitBuilder<tollgate::MemoryStore> {
    VmArea::new()
        .strict(true)
        .per_token(PER_MINUTE)
        .per_ip(PER_MINUTE)
        .builder()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mode = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("BENCH_MODE").ok())
        .unwrap_or_else(|| "bare".to_owned());
    let limited = match mode.as_str() {
        "bare" => app(),
        "memory" => app().layer(vmarea().build()?),
        "redis" => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
            let store = tollgate_redis::RedisStore::connect(&url).await?;
            app().layer(vmarea().store(store).build()?)
        }
        "redis-counters" => {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
            let connection = tollgate_redis::RedisConnection::connect(url.as_str()).await?;
            let store = tollgate_redis::RedisStore::builder(connection)
                .fixed_window_counters(true)
                .build();
            store.load_script().await?;
            app().layer(vmarea().store(store).build()?)
        }
        "ip" => app().layer(
            RateLimitLayer::builder()
                .limit(Limit::per_minute("per_ip", PER_MINUTE).key(KeyPart::client_ip()))
                .build()?,
        ),
        "governor" => {
            let config = GovernorConfigBuilder::default()
                .per_nanosecond(1)
                .burst_size(u32::MAX)
                .use_headers()
                .finish()
                .ok_or("tower_governor configuration")?;
            app().layer(GovernorLayer::new(config))
        }
        "flood" => app().layer(
            RateLimitLayer::builder()
                .limit(Limit::per_day("per_ip", 1).key(KeyPart::client_ip()))
                .build()?,
        ),
        "governor-flood" => {
            let config = GovernorConfigBuilder::default()
                .period(std::time::Duration::from_secs(86_400))
                .burst_size(1)
                .use_headers()
                .finish()
                .ok_or("tower_governor configuration")?;
            app().layer(GovernorLayer::new(config))
        }
        other => {
            return Err(format!(
                "unknown mode {other:?}: bare, memory, ip, redis, redis-counters, governor, flood or governor-flood"
            )
            .into())
        }
    };
    // The auth layer runs first, so the limiter sees the TokenId.
    let app = limited.layer(ServiceBuilder::new().map_request(authenticate));

    let addr = std::env::var("TOLLGATE_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!(
        "bench_server ({mode}) listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
