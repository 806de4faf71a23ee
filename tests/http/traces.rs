//! Traces of decisions: each limited request's debug span says which rule bound, the outcome,
//! what remains and the store's time; no field of any span or event holds a client's token,
//! API key or address.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use axum::Router;
use http::{HeaderName, Method, StatusCode};
use tollgate::{KeyPart, Limit, RateLimitLayer};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use crate::support::{serve_axum, TestClient};

/// Every span's name and fields, and every event's fields, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct Text<'a>(&'a mut String);

impl Visit for Text<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Captured {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut line = format!("span {}", attrs.metadata().name());
        attrs.record(&mut Text(&mut line));
        self.0.lock().unwrap().push(line);
    }

    fn on_record(
        &self,
        _: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: Context<'_, S>,
    ) {
        let mut line = "record".to_owned();
        values.record(&mut Text(&mut line));
        self.0.lock().unwrap().push(line);
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut line = format!("event {}", event.metadata().level());
        event.record(&mut Text(&mut line));
        self.0.lock().unwrap().push(line);
    }
}

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu";
const API_KEY: &str = "ak_live_9f8e7d6c5b4a3f2e1d0c";
const CLIENT_IP: &str = "203.0.113.199";

#[tokio::test]
async fn a_decision_span_names_rule_outcome_remaining_and_store_time_and_no_identity() {
    let captured = Captured::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    let layer = RateLimitLayer::builder()
        .trusted_proxies(["127.0.0.1"])
        .limit(Limit::per_minute("per_ip", 2).key(KeyPart::client_ip()))
        .limit(Limit::per_minute("per_token", 10).key(KeyPart::bearer_token()))
        .limit(
            Limit::per_minute("per_key", 1)
                .shadow(true)
                .key(KeyPart::header(HeaderName::from_static("x-api-key"))),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(layer);
    let client = TestClient::new(serve_axum(app).await);
    let bearer = format!("Bearer {TOKEN}");
    let headers = [
        ("authorization", bearer.as_bytes()),
        ("x-api-key", API_KEY.as_bytes()),
        ("x-forwarded-for", CLIENT_IP.as_bytes()),
    ];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            client
                .send(Method::GET, "/?api_key=q", &headers)
                .await
                .status,
        );
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));

    let lines = captured.0.lock().unwrap().clone();
    let all = lines.join("\n");
    assert!(
        lines
            .iter()
            .any(|l| l == "span rate_limit store=\"memory\""),
        "{all}"
    );
    assert!(all.contains("outcome=\"allowed\""), "{all}");
    assert!(all.contains("outcome=\"denied\""), "{all}");
    assert!(all.contains("rule=\"per_ip\""), "{all}");
    assert!(all.contains("remaining=0"), "{all}");
    assert!(all.contains("store_us="), "{all}");
    // The shadow rule's would-be denial is told too, by its name.
    assert!(all.contains("per_key"), "{all}");
    for secret in [TOKEN, API_KEY, CLIENT_IP, "c2VjcmV0"] {
        assert!(!all.contains(secret), "{secret} reached a trace:\n{all}");
    }
}
