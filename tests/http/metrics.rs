//! The `metrics` facade through a real server and a real Prometheus recorder: every outcome
//! counted under its rule, the snapshot agreeing, the store timed, no identity in any label.

use axum::routing::get;
use axum::Router;
use http::{HeaderName, Method, StatusCode};
use metrics_exporter_prometheus::PrometheusBuilder;
use tollgate::{Algorithm, KeyPart, Limit, RateLimitBuilder, RateLimitLayer, Store};

use crate::support::{serve_axum, BrokenStore, TestClient};

/// Builds the layer with a recorder of its own (the handles are registered at build), and a
/// server in front of it.
async fn serve<S: Store + Clone>(builder: RateLimitBuilder<S>) -> (TestClient, RateLimitLayer<S>) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let layer = metrics::with_local_recorder(&recorder, || builder.build().unwrap());
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/health", get(|| async { "ok" }))
        .layer(layer.clone())
        // Outside the limiter, as an operator would mount it (or exempt it).
        .route("/metrics", get(move || std::future::ready(scrape.render())));
    (TestClient::new(serve_axum(app).await), layer)
}

/// The value of the sample `name{labels}` in a scrape (labels in the order rendered).
fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
        let matches = metric == name
            && labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            && rest.matches('=').count() == labels.len();
        matches.then(|| value.parse().unwrap())
    })
}

fn api_key() -> KeyPart {
    KeyPart::header(HeaderName::from_static("x-api-key"))
}

#[tokio::test]
async fn every_outcome_is_counted_under_its_rule_and_the_snapshot_agrees() {
    let (client, layer) = serve(
        RateLimitLayer::builder()
            .limit(
                Limit::per_minute("per_key", 5)
                    .algorithm(Algorithm::FixedWindow)
                    .key(api_key()),
            )
            .limit(
                Limit::per_minute("trial_shadow", 2)
                    .algorithm(Algorithm::FixedWindow)
                    .shadow(true)
                    .key(api_key()),
            )
            .exempt_if(|head: &tollgate::RequestHead<'_>| head.uri().path() == "/health"),
    )
    .await;
    let key = [("x-api-key", &b"sk_live_supersecret_value"[..])];
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(client.send(Method::GET, "/", &key).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);
    for _ in 0..3 {
        client.get("/health").await;
    }
    // Scraped over HTTP, as Prometheus does.
    let scraped = client.get("/metrics").await;
    assert_eq!(scraped.status, StatusCode::OK);
    let text = scraped.text().to_owned();
    let decisions = |rule, outcome| {
        sample(
            &text,
            "tollgate_decisions_total",
            &[("rule", rule), ("outcome", outcome)],
        )
    };
    assert_eq!(decisions("per_key", "allowed"), Some(5.0), "{text}");
    assert_eq!(decisions("per_key", "denied"), Some(2.0));
    // The shadow rule admitted the first two, would have denied the next five.
    assert_eq!(decisions("trial_shadow", "shadow_denied"), Some(5.0));
    assert_eq!(decisions("", "exempt"), Some(3.0));
    // Remaining 0 after the fifth: below 20% of 5 once (remaining 0; 1 is exactly 20%).
    assert_eq!(
        sample(&text, "tollgate_near_limit_total", &[("rule", "per_key")]),
        Some(1.0)
    );
    let checks = sample(
        &text,
        "tollgate_store_seconds_count",
        &[("store", "memory"), ("op", "check")],
    );
    assert_eq!(checks, Some(7.0), "{text}");

    let snapshot = layer.metrics();
    let per_key = snapshot.limit("per_key").unwrap();
    assert_eq!(
        (per_key.allowed, per_key.denied, per_key.near_limit),
        (5, 2, 1)
    );
    assert_eq!(snapshot.limit("trial_shadow").unwrap().shadow_denied, 5);
    assert_eq!(snapshot.exempt, 3);
    assert!(!text.contains("supersecret"), "an identity reached a label");
}

#[tokio::test]
async fn store_failures_are_errors_of_every_applicable_rule() {
    let (client, _) = serve(
        RateLimitLayer::builder()
            .store(BrokenStore::<false>)
            .limit(Limit::per_minute("per_ip", 5).key(KeyPart::client_ip())),
    )
    .await;
    for _ in 0..2 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let text = client.get("/metrics").await.text().to_owned();
    let errors = sample(
        &text,
        "tollgate_decisions_total",
        &[("rule", "per_ip"), ("outcome", "error")],
    );
    assert_eq!(errors, Some(2.0), "{text}");
    assert!(!text.contains("127.0.0.1"), "an address reached a label");
    assert!(
        sample(
            &text,
            "tollgate_store_seconds_count",
            &[("store", "custom"), ("op", "check")]
        )
        .is_some_and(|n| n >= 2.0),
        "{text}"
    );
}

/// Near the limit means less than `near_limit_percent` of it left: with 30 % of 10, the
/// requests leaving 2, 1 and 0 are near it, the one leaving 3 (exactly 30 %) is not.
#[tokio::test]
async fn near_the_limit_is_strictly_less_than_its_percent_left() {
    let (client, layer) = serve(
        RateLimitLayer::builder()
            .near_limit_percent(30)
            .limit(Limit::per_minute("per_ip", 10).key(KeyPart::client_ip())),
    )
    .await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.status, StatusCode::OK);
    }
    let per_ip = layer.metrics().limit("per_ip").cloned().unwrap();
    assert_eq!((per_ip.allowed, per_ip.near_limit), (10, 3));
}
