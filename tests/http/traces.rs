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

/// A table of client quotas that never changes.
#[derive(Clone)]
struct Quotas(Vec<tollgate::ClientQuota>);

impl tollgate::ClientQuotas for Quotas {
    type Error = std::convert::Infallible;

    async fn load(&self) -> Result<Vec<tollgate::ClientQuota>, Self::Error> {
        Ok(self.0.clone())
    }
}

/// Client quotas that fit no limit are left out with a warning that says how many; quotas
/// that all fit give none.
#[tokio::test]
async fn client_quotas_left_out_are_counted_in_one_warning() {
    let captured = Captured::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(captured.clone()));
    let limit = || {
        Limit::per_minute("per_key", 10).key(KeyPart::header(HeaderName::from_static("x-api-key")))
    };
    let digest = RateLimitLayer::builder()
        .limit(limit())
        .build()
        .unwrap()
        .client_digest("per_key", "trial")
        .unwrap();
    let quota = |rule: &str| tollgate::ClientQuota {
        rule: rule.into(),
        client: digest,
        quota: tollgate::Quota::per_minute(20).unwrap(),
    };
    let warnings = || {
        captured
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("were left out"))
            .cloned()
            .collect::<Vec<_>>()
    };
    let refresh = std::time::Duration::from_millis(10);
    let fitting = RateLimitLayer::builder()
        .limit(limit())
        .client_quotas(Quotas(vec![quota("per_key")]), refresh)
        .build()
        .unwrap();
    let misfits = RateLimitLayer::builder()
        .limit(limit())
        .client_quotas(
            Quotas(vec![quota("per_key"), quota("no_such_limit")]),
            refresh,
        )
        .build()
        .unwrap();
    for _ in 0..200 {
        if !warnings().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Both tables have been read several times by now: one warning, from the misfits alone.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let warned = warnings();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("skipped=1"), "{warned:?}");
    drop((fitting, misfits));
}
