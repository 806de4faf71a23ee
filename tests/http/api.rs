//! The shape users touch: limits in one expression, every mistake at once, closures as key
//! parts, presets as builders, scopes on nested routers, the service's accessors.

use axum::routing::get;
use axum::Router;
use http::{Method, StatusCode};
use serde::Serialize;
use tollgate::presets::vmarea::VmArea;
use tollgate::{
    BuildError, Denial, KeyPart, Limit, RateLimitBuilder, RateLimitLayer, RequestHead, Scope,
};
use tower::Layer;

use crate::support::{serve_axum, TestClient};

/// A router of its own, limited on `/items/{id}` only, as a team would write it before
/// someone mounts it with `Router::nest`.
fn items() -> Router {
    let limiter = RateLimitLayer::builder()
        .limit(
            Limit::per_minute("items", 1)
                .scope(Scope::all().path("/items/{id}"))
                .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .route("/other", get(|| async { "other" }))
        .layer(limiter)
}

#[tokio::test]
async fn a_limiter_on_a_router_still_applies_once_the_router_is_nested() {
    let app = Router::new()
        .nest("/api", items())
        .nest("/orgs/{org}", items());
    let client = TestClient::new(serve_axum(app).await);
    for prefix in ["/api", "/orgs/acme"] {
        assert_eq!(
            client.get(&format!("{prefix}/items/1")).await.status,
            StatusCode::OK
        );
        // Another id, the same route: the same bucket, now empty.
        let denied = client.get(&format!("{prefix}/items/2")).await;
        assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS, "{prefix}");
        // Outside the scope.
        for _ in 0..3 {
            assert_eq!(
                client.get(&format!("{prefix}/other")).await.status,
                StatusCode::OK
            );
        }
    }
}

#[tokio::test]
async fn scopes_follow_the_routers_routes_not_the_ids_in_paths() {
    // `/users/me` is its own route; `/users/{id}` with id "me" would be another.
    let limiter = RateLimitLayer::builder()
        .limit(
            Limit::per_minute("me", 1)
                .scope(Scope::all().path("/users/me"))
                .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/users/me", get(|| async { "me" }))
        .route("/users/{id}", get(|| async { "user" }))
        .layer(limiter);
    let client = TestClient::new(serve_axum(app).await);
    assert_eq!(client.get("/users/me").await.status, StatusCode::OK);
    assert_eq!(
        client.get("/users/me").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(client.get("/users/7").await.status, StatusCode::OK);
    assert_eq!(client.get("/users/7").await.status, StatusCode::OK);

    // A pattern naming an id matches no template: `/items/7` is routed to `/items/{id}`.
    let limiter = RateLimitLayer::builder()
        .limit(
            Limit::per_minute("seven", 1)
                .scope(Scope::all().path("/items/7"))
                .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/items/{id}", get(|| async { "item" }))
        .layer(limiter);
    let client = TestClient::new(serve_axum(app).await);
    for _ in 0..3 {
        assert_eq!(client.get("/items/7").await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_closure_over_the_request_head_is_a_key_part() {
    let tenant = KeyPart::from_fn("tenant", |head: &RequestHead<'_>| {
        head.headers().get("x-tenant").cloned()
    });
    let limiter = RateLimitLayer::builder()
        .limit(Limit::per_minute("per_tenant", 1).key(tenant))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(limiter);
    let client = TestClient::new(serve_axum(app).await);
    let as_tenant = |t: &'static [u8]| [("x-tenant", t)];
    let status = |reply: crate::support::Reply| reply.status;
    assert_eq!(
        status(client.send(Method::GET, "/", &as_tenant(b"acme")).await),
        StatusCode::OK
    );
    assert_eq!(
        status(client.send(Method::GET, "/", &as_tenant(b"acme")).await),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        status(client.send(Method::GET, "/", &as_tenant(b"globex")).await),
        StatusCode::OK
    );
    // No tenant, or an empty one: the (required) part is absent, the limit does not apply.
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, StatusCode::OK);
        assert_eq!(
            status(client.send(Method::GET, "/", &as_tenant(b"")).await),
            StatusCode::OK
        );
    }
}

#[test]
fn two_closures_with_one_name_are_a_mistake_clones_are_not() {
    let tenant = KeyPart::from_fn("tenant", |head| head.headers().get("x-tenant").cloned());
    let ok = RateLimitLayer::builder()
        .limit(Limit::per_minute("a", 1).key(tenant.clone()))
        .limit(Limit::per_minute("b", 1).key(tenant))
        .build();
    assert!(ok.is_ok());
    let err = RateLimitLayer::builder()
        .limit(Limit::per_minute("a", 1).key(KeyPart::from_fn("tenant", |_| Some("x"))))
        .limit(Limit::per_minute("b", 1).key(KeyPart::from_fn("tenant", |_| Some("y"))))
        .build()
        .unwrap_err();
    assert!(matches!(err, BuildError::DuplicateKeyPart(ref name) if name == "tenant"));
}

#[test]
fn build_reports_every_mistake_each_naming_its_limit() {
    let err = RateLimitLayer::builder()
        .limit(Limit::per_minute("login", 0))
        .limit(Limit::per_second("search", 10).cost(11))
        .limit(Limit::per_minute("api", 10).scope(Scope::all().path("api/*")))
        .limit(Limit::per_minute("api", 20))
        .ipv4_prefix(33)
        .build()
        .unwrap_err();
    let mistakes = err.mistakes();
    assert_eq!(mistakes.len(), 5, "{err}");
    assert!(matches!(mistakes[0], BuildError::Quota(ref q) if q.limit() == "login"));
    assert!(matches!(mistakes[1], BuildError::Rule(_)));
    assert!(matches!(mistakes[2], BuildError::Prefix { .. }));
    assert!(matches!(mistakes[3], BuildError::Route(ref r) if r.limit() == Some("api")));
    assert!(matches!(mistakes[4], BuildError::DuplicateRule(_)));
    let text = err.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for (line, name) in lines[1..]
        .iter()
        .zip(["login", "search", "/33", "api", "api"])
    {
        assert!(line.starts_with("- ") && line.contains(name), "{line}");
    }
    // One mistake is itself, as before.
    let one = RateLimitLayer::builder()
        .limit(Limit::per_minute("login", 0))
        .build()
        .unwrap_err();
    assert!(matches!(one, BuildError::Quota(_)));
    assert_eq!(
        one.to_string(),
        "limit \"login\": a quota's limit must be at least 1 request"
    );
}

#[tokio::test]
async fn a_custom_body_is_any_serialize_value() {
    #[derive(Serialize)]
    struct SlowDown<'a> {
        rule: &'a str,
        wait: u64,
        quoted: &'a str,
    }
    let limiter = RateLimitLayer::builder()
        .limit(Limit::per_minute("per_ip", 1).key(KeyPart::client_ip()))
        .on_denied(|denial: &Denial<'_>| {
            denial.json(SlowDown {
                rule: denial.rule().name(),
                wait: denial.retry_after_secs().min(60),
                quoted: "say \"hi\"",
            })
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(limiter);
    let client = TestClient::new(serve_axum(app).await);
    client.get("/").await;
    let denied = client.get("/").await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.header("content-type"), Some("application/json"));
    let wait = denied.retry_after().min(60);
    assert_eq!(
        denied.text(),
        format!(r#"{{"rule": "per_ip", "wait": {wait}, "quoted": "say \"hi\""}}"#)
    );
}

#[test]
fn a_preset_converts_into_a_builder() {
    let from = RateLimitBuilder::from(VmArea::new()).build().unwrap();
    let into: RateLimitBuilder = VmArea::new().into();
    let into = into.build().unwrap();
    let old = VmArea::new().builder().build().unwrap();
    for layer in [from, into, old] {
        assert_eq!(layer.metrics().limits.len(), 2);
    }
}

#[test]
fn the_service_gives_its_inner_service_back() {
    let layer = RateLimitLayer::builder().build().unwrap();
    let mut service = layer.layer(Router::new());
    let _: &Router = service.get_ref();
    let _: &mut Router = service.get_mut();
    let _: Router = service.into_inner();
}

/// `Scope::methods` limits only requests of the methods listed: reads pass, writes are counted.
#[tokio::test]
async fn a_scope_of_methods_counts_only_those_methods() {
    let limiter = RateLimitLayer::builder()
        .limit(
            Limit::per_minute("writes", 1)
                .scope(Scope::all().methods([Method::POST, Method::PUT]))
                .key(KeyPart::client_ip()),
        )
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "read" }).post(|| async { "write" }))
        .layer(limiter);
    let client = TestClient::new(serve_axum(app).await);
    for _ in 0..3 {
        assert_eq!(client.get("/").await.status, StatusCode::OK);
    }
    let post = || client.send(Method::POST, "/", &[]);
    assert_eq!(post().await.status, StatusCode::OK);
    assert_eq!(post().await.status, StatusCode::TOO_MANY_REQUESTS);
}

/// A layer's `Debug` lists its limits, in the order they were added.
#[test]
fn a_layers_debug_lists_its_limits() {
    let layer = RateLimitLayer::builder()
        .limit(Limit::per_minute("login", 5).key(KeyPart::client_ip()))
        .limit(Limit::per_hour("signup", 2).key(KeyPart::client_ip()))
        .build()
        .unwrap();
    let shown = format!("{layer:?}");
    let (login, signup) = (shown.find("\"login\""), shown.find("\"signup\""));
    assert!(
        login.is_some() && signup.is_some() && login < signup,
        "{shown}"
    );
}

/// With a store that answers at once (the memory store) a request is decided, and charged,
/// in `call`: a response future dropped before it is polled has used its quota.
#[tokio::test]
async fn with_the_memory_store_a_request_is_charged_when_called_not_when_polled() {
    use tower::{Service, ServiceExt};
    type Request = http::Request<axum::body::Body>;
    let limiter = RateLimitLayer::builder()
        .limit(Limit::per_minute("all", 1))
        .build()
        .unwrap();
    let mut service = limiter.layer(Router::new().route("/", get(|| async { "ok" })));
    let request = || Request::new(axum::body::Body::empty());
    let unpolled = ServiceExt::<Request>::ready(&mut service)
        .await
        .unwrap()
        .call(request());
    drop(unpolled);
    let ready = ServiceExt::<Request>::ready(&mut service).await.unwrap();
    let response = ready.call(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// Closures of different names are different parts, also beside the built-in parts: one limit
/// may be keyed by the client's address and two closures.
#[test]
fn closures_of_different_names_beside_other_parts_are_no_duplicates() {
    let built = RateLimitLayer::builder()
        .limit(
            Limit::per_minute("a", 1)
                .key(KeyPart::client_ip())
                .key(KeyPart::from_fn("tenant", |_| Some("t")))
                .key(KeyPart::from_fn("org", |_| Some("o"))),
        )
        .build();
    assert!(built.is_ok(), "{:?}", built.err());
}

/// A part is required unless made optional.
#[test]
fn a_key_part_is_required_unless_optional() {
    assert!(KeyPart::client_ip().is_required());
    assert!(!KeyPart::client_ip().optional().is_required());
}

/// A denial responder sees the refused request: its method and its headers.
#[tokio::test]
async fn a_denial_shows_the_refused_requests_method_and_headers() {
    #[derive(Serialize)]
    struct Refused {
        method: String,
        who: String,
    }
    let limiter = RateLimitLayer::builder()
        .limit(Limit::per_minute("writes", 1).key(KeyPart::client_ip()))
        .on_denied(|denial: &Denial<'_>| {
            let who = denial.headers().get("x-who").map(|v| v.to_str().unwrap());
            denial.json(Refused {
                method: denial.method().to_string(),
                who: who.unwrap_or("nobody").to_string(),
            })
        })
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", axum::routing::post(|| async { "ok" }))
        .layer(limiter);
    let client = TestClient::new(serve_axum(app).await);
    let post = || client.send(Method::POST, "/", &[("x-who", b"alice")]);
    assert_eq!(post().await.status, StatusCode::OK);
    let denied = post().await;
    assert_eq!(denied.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(denied.text(), r#"{"method": "POST", "who": "alice"}"#);
}
