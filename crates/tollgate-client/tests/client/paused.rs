//! On a paused tokio clock: the layer over a server that answers from a script (no network),
//! so that every wait is measured to the millisecond and minutes of backoff take no time.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tokio::time::Instant;
use tollgate_client::{Backoff, CallReport, PoliteLayer, IDEMPOTENCY_KEY};
use tower::{Service, ServiceExt};
use tower_layer::Layer;

const MS: fn(u64) -> Duration = Duration::from_millis;
const S: fn(u64) -> Duration = Duration::from_secs;

/// Response headers as (name, raw value) pairs.
type Headers<'a> = &'a [(&'a str, &'a [u8])];

/// The tokio timer's resolution: a sleep ends on the millisecond at or after its deadline.
const TICK: Duration = Duration::from_millis(1);

/// A server answering the n-th request (from 0) with `script(n)`, recording when each came and
/// its headers.
#[derive(Clone)]
struct Scripted {
    script: Arc<dyn Fn(usize) -> Response<Full<Bytes>> + Send + Sync>,
    seen: Arc<Mutex<Vec<(Instant, HeaderMap)>>>,
}

impl Scripted {
    fn new(script: impl Fn(usize) -> Response<Full<Bytes>> + Send + Sync + 'static) -> Self {
        Self {
            script: Arc::new(script),
            seen: Arc::default(),
        }
    }

    /// Always this status with these headers.
    fn always(status: StatusCode, headers: Headers) -> Self {
        let headers: Vec<(HeaderName, HeaderValue)> = headers
            .iter()
            .map(|(n, v)| {
                (
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_bytes(v).unwrap(),
                )
            })
            .collect();
        Self::new(move |_| answer(status, &headers))
    }

    /// The gaps between consecutive requests.
    fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen.lock().unwrap();
        seen.windows(2).map(|w| w[1].0 - w[0].0).collect()
    }

    fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn headers(&self, n: usize) -> HeaderMap {
        self.seen.lock().unwrap()[n].1.clone()
    }
}

fn answer(status: StatusCode, headers: &[(HeaderName, HeaderValue)]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
    *response.status_mut() = status;
    response.headers_mut().extend(headers.iter().cloned());
    response
}

impl<B> Service<Request<B>> for Scripted {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let mut seen = self.seen.lock().unwrap();
        let n = seen.len();
        seen.push((Instant::now(), request.headers().clone()));
        std::future::ready(Ok((self.script)(n)))
    }
}

/// One call through `layer` to `server`; the status and the layer's report.
async fn call_with<B>(
    layer: &PoliteLayer,
    server: &Scripted,
    method: Method,
    body: B,
) -> (StatusCode, CallReport)
where
    B: tollgate_client::ReplayBody + Send + 'static,
{
    let mut service = layer.layer(server.clone());
    let request = Request::builder()
        .method(method)
        .uri("http://api.test/v1/items")
        .body(body)
        .unwrap();
    let response = ServiceExt::<Request<B>>::ready(&mut service)
        .await
        .unwrap()
        .call(request)
        .await
        .unwrap();
    let report = *response.extensions().get::<CallReport>().unwrap();
    (response.status(), report)
}

async fn get(layer: &PoliteLayer, server: &Scripted) -> (StatusCode, CallReport) {
    call_with(layer, server, Method::GET, Full::new(Bytes::new())).await
}

fn within(gap: Duration, low: Duration, high: Duration) -> bool {
    gap >= low && gap <= high + TICK
}

#[tokio::test(start_paused = true)]
async fn vast_sdk_waits_0_15_then_x1_5_three_times() {
    let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &[]);
    let layer = PoliteLayer::new().backoff(Backoff::vast_sdk());
    let (status, report) = get(&layer, &server).await;
    assert_eq!(
        (status, report.attempts()),
        (StatusCode::TOO_MANY_REQUESTS, 4)
    );
    let gaps = server.gaps();
    for (gap, want) in gaps.iter().zip([150_000, 225_000, 337_500]) {
        let want = Duration::from_micros(want);
        assert!(within(*gap, want, want), "{gaps:?}");
    }
    assert!(within(report.waited(), MS(712), MS(713)), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn vast_serverless_waits_min_2_to_the_n_plus_u_and_5_on_408_429_and_5xx() {
    for status in [
        StatusCode::REQUEST_TIMEOUT,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::BAD_GATEWAY,
    ] {
        let server = Scripted::always(status, &[]);
        let (got, report) = get(&PoliteLayer::new(), &server).await;
        assert_eq!(
            (got, report.attempts()),
            (status, 6),
            "the default policy, 5 retries"
        );
        let gaps = server.gaps();
        for (n, gap) in gaps.iter().enumerate() {
            let base = S(1 << n);
            let (low, high) = (base.min(S(5)), (base + S(1)).min(S(5)));
            assert!(within(*gap, low, high), "retry {}: {gaps:?}", n + 1);
        }
    }
    // Neither policy retries a 404, nor a 503 that says nothing... except the serverless one.
    let server = Scripted::always(StatusCode::NOT_FOUND, &[]);
    assert_eq!(get(&PoliteLayer::new(), &server).await.1.attempts(), 1);
    let vast = PoliteLayer::new().backoff(Backoff::vast_sdk());
    let server = Scripted::always(StatusCode::SERVICE_UNAVAILABLE, &[]);
    assert_eq!(get(&vast, &server).await.1.attempts(), 1);
    let server = Scripted::always(StatusCode::SERVICE_UNAVAILABLE, &[("retry-after", b"2")]);
    assert_eq!(
        get(&vast, &server).await.1.attempts(),
        4,
        "a 503 with a wait is retried"
    );
    assert!(server.gaps().iter().all(|g| within(*g, S(2), S(2))));
}

#[tokio::test(start_paused = true)]
async fn vmarea_waits_max_retry_after_1_times_2_to_the_n_minus_1_plus_u() {
    let layer = PoliteLayer::new().backoff(Backoff::vmarea());
    for (headers, base) in [(&[][..], 1), (&[("retry-after", &b"3"[..])][..], 3)] {
        let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, headers);
        let (_, report) = get(&layer, &server).await;
        assert_eq!(report.attempts(), 5);
        let gaps = server.gaps();
        for (n, gap) in gaps.iter().enumerate() {
            let low = S(base << n);
            assert!(within(*gap, low, low + S(1)), "retry {}: {gaps:?}", n + 1);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn vast_recipe_doubles_from_1_s() {
    let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &[]);
    let layer = PoliteLayer::new().backoff(Backoff::vast_recipe());
    assert_eq!(get(&layer, &server).await.1.attempts(), 5);
    let gaps = server.gaps();
    for (gap, want) in gaps.iter().zip([1, 2, 4, 8]) {
        assert!(within(*gap, S(want), S(want)), "{gaps:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn every_signal_is_waited_to_the_full() {
    let date = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + S(1_700_000_000));
    let in_5 = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + S(1_700_000_005));
    let cases: [(Headers, Duration); 7] = [
        (&[("retry-after", b"2")], S(2)),
        (&[("retry-after", b"1.5")], MS(1500)),
        (
            &[("date", date.as_bytes()), ("retry-after", in_5.as_bytes())],
            S(5),
        ),
        (&[("ratelimit", br#""burst";r=0;t=3"#)], S(3)),
        (
            &[("ratelimit-remaining", b"0"), ("ratelimit-reset", b"4")],
            S(4),
        ),
        (
            &[("x-ratelimit-remaining", b"0"), ("x-ratelimit-reset", b"6")],
            S(6),
        ),
        (
            &[
                ("date", date.as_bytes()),
                ("x-ratelimit-remaining", b"0"),
                ("x-ratelimit-reset", b"1700000007"),
            ],
            S(7),
        ),
    ];
    // With learned pacing off too: the retry's own wait, not only the hold, is the server's.
    for learn in [true, false] {
        let layer = PoliteLayer::new()
            .backoff(Backoff::vast_sdk())
            .learn_pacing(learn);
        for (headers, want) in cases {
            let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, headers);
            let (_, report) = get(&layer, &server).await;
            assert_eq!(report.attempts(), 4);
            let gaps = server.gaps();
            assert!(
                gaps.iter().all(|g| within(*g, want, want)),
                "{headers:?}: {gaps:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_wait_beyond_the_cap_returns_the_response_at_once() {
    let layer = PoliteLayer::new().max_wait(S(60));
    for headers in [
        &[("retry-after", &b"61"[..])][..],
        &[("retry-after", b"99999999999")],
        &[
            ("x-ratelimit-remaining", b"0"),
            ("x-ratelimit-reset", b"99999999999"),
        ],
        &[("ratelimit", br#""day";r=0;t=86400"#)],
    ] {
        let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, headers);
        let start = Instant::now();
        let (status, report) = get(&layer, &server).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            (report.attempts(), report.waited()),
            (1, Duration::ZERO),
            "{headers:?}"
        );
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
    // VMArea: 10, 20, 40 s (+ U), then 80 s is more than 60: the 4th 429 is returned.
    let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &[("retry-after", b"10")]);
    let (_, report) = get(&layer.clone().backoff(Backoff::vmarea()), &server).await;
    assert_eq!(report.attempts(), 4, "{report:?}");
    // Within the cap, jitter is trimmed to it, never the server's wait.
    let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &[("retry-after", b"59.5")]);
    get(&layer, &server).await;
    let gaps = server.gaps();
    assert!(
        gaps.iter().all(|g| within(*g, MS(59_500), S(60))),
        "{gaps:?}"
    );
}

/// Hostile or broken values: never a panic, never a wait below what the value (read as
/// RFC 9110 allows) says, never one above the cap.
#[tokio::test(start_paused = true)]
async fn malformed_and_huge_values_never_shorten_a_wait_nor_pass_the_cap() {
    let digits = vec![b'9'; 100_000];
    let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + S(784_111_777));
    // (header, value, the shortest acceptable wait before a retry, or None: returned at once)
    let cases: Vec<(&str, &[u8], Option<Duration>)> = vec![
        ("retry-after", b"-1", Some(MS(150))),
        ("retry-after", b"garbage", Some(MS(150))),
        ("retry-after", b"", Some(MS(150))),
        ("retry-after", b"1e3", Some(MS(150))),
        ("retry-after", b"\xff\xfe", Some(MS(150))),
        ("retry-after", past.as_bytes(), Some(MS(150))),
        ("retry-after", b"0", Some(MS(150))),
        ("retry-after", b"99999999999", None),
        ("retry-after", b"18446744073709551616", None),
        ("retry-after", &digits, None),
        ("x-ratelimit-reset", b"99999999999", None),
        ("x-ratelimit-reset", b"-5", Some(MS(150))),
        ("x-ratelimit-reset", b"1600000000", Some(MS(150))),
        ("ratelimit", b"\"a\";r=0;t=99999999999999999999", None),
        ("ratelimit", b"\"a\";r=0;t=-3", Some(MS(150))),
        ("ratelimit", &[b','; 10_000], Some(MS(150))),
    ];
    let cap = S(30);
    let layer = PoliteLayer::new()
        .backoff(Backoff::vast_sdk().retries(1))
        .max_wait(cap);
    for (name, value, floor) in cases {
        let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &[(name, value)]);
        let (_, report) = get(&layer, &server).await;
        let shown = String::from_utf8_lossy(&value[..value.len().min(40)]).into_owned();
        match floor {
            Some(floor) => {
                assert_eq!(report.attempts(), 2, "{name}: {shown}");
                let gap = server.gaps()[0];
                assert!(gap >= floor && gap <= cap, "{name}: {shown}: {gap:?}");
            }
            None => assert_eq!(
                (report.attempts(), report.waited()),
                (1, Duration::ZERO),
                "{name}: {shown}"
            ),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Any bytes in any of the fields: the call ends, each wait is within the cap, and a plain
    /// number of seconds is waited in full (or, beyond the cap, not at all).
    #[test]
    fn any_header_value_is_safe(
        name in prop::sample::select(vec!["retry-after", "x-ratelimit-reset", "ratelimit-reset", "ratelimit"]),
        value in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            (0u64..200).prop_map(|n| n.to_string().into_bytes()),
            any::<u64>().prop_map(|n| n.to_string().into_bytes()),
            (0u64..100, 0u64..100).prop_map(|(r, t)| format!("\"p\";r={r};t={t}").into_bytes()),
        ],
        remaining in prop::option::of(0u64..3),
    ) {
        let Ok(value) = HeaderValue::from_bytes(&value) else { return Ok(()) };
        let mut headers: Vec<(&str, &[u8])> = vec![(name, value.as_bytes())];
        let remaining = remaining.map(|r| r.to_string());
        if let Some(r) = &remaining {
            headers.push(("x-ratelimit-remaining", r.as_bytes()));
            headers.push(("ratelimit-remaining", r.as_bytes()));
        }
        let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &headers);
        let cap = S(120);
        let layer = PoliteLayer::new().backoff(Backoff::vast_sdk().retries(2)).max_wait(cap);
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        let (_, report) = rt.block_on(get(&layer, &server));
        let gaps = server.gaps();
        prop_assert_eq!(gaps.len() as u32, report.attempts() - 1);
        for gap in &gaps {
            prop_assert!(*gap <= cap + TICK, "{:?}", gaps);
        }
        if name == "retry-after" {
            if let Ok(secs) = value.to_str().unwrap_or_default().parse::<u64>() {
                match gaps.first() {
                    Some(gap) => prop_assert!(*gap >= S(secs)),
                    None => prop_assert!(secs > 120),
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_learned_hold_is_shared_by_every_clone_and_service_of_the_layer() {
    // The first answer spends the limit for 5 s; the others leave plenty.
    let server = Scripted::new(|n| {
        let remaining = if n == 0 { "0" } else { "9" };
        let headers = [
            (
                HeaderName::from_static("x-ratelimit-remaining"),
                HeaderValue::from_static(remaining),
            ),
            (
                HeaderName::from_static("x-ratelimit-reset"),
                HeaderValue::from_static("5"),
            ),
        ];
        answer(StatusCode::OK, &headers)
    });
    let layer = PoliteLayer::new();
    let start = Instant::now();
    get(&layer, &server).await;
    // Another service built by the same layer (and so every clone) waits the hold out.
    let (status, report) = get(&layer, &server).await;
    assert_eq!((status, report.attempts()), (StatusCode::OK, 1));
    assert!(within(report.waited(), S(5), S(5)), "{report:?}");
    assert!(within(start.elapsed(), S(5), S(5)));
    // Remaining 9: no more holding.
    assert_eq!(get(&layer, &server).await.1.waited(), Duration::ZERO);
    // A layer of its own has a table of its own.
    let server = Scripted::always(
        StatusCode::OK,
        &[("x-ratelimit-remaining", b"0"), ("x-ratelimit-reset", b"5")],
    );
    get(&layer, &server).await;
    assert_eq!(
        get(&PoliteLayer::new(), &server).await.1.waited(),
        Duration::ZERO
    );
    // Learning off: no hold.
    let unlearned = PoliteLayer::new().learn_pacing(false);
    get(&unlearned, &server).await;
    assert_eq!(get(&unlearned, &server).await.1.waited(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_minimum_interval_spaces_concurrent_calls_in_order() {
    let server = Scripted::always(StatusCode::OK, &[]);
    let layer = PoliteLayer::new().min_interval(MS(500));
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let (layer, server) = (layer.clone(), server.clone());
            tokio::spawn(async move { get(&layer, &server).await })
        })
        .collect();
    let mut reports = Vec::new();
    for call in calls {
        reports.push(call.await.unwrap());
    }
    let gaps = server.gaps();
    assert!(
        gaps.iter().all(|g| within(*g, MS(500), MS(500))),
        "{gaps:?}"
    );
    assert!(within(start.elapsed(), MS(1500), MS(1500)));
    let mut waited: Vec<_> = reports.iter().map(|(_, r)| r.waited()).collect();
    waited.sort();
    assert_eq!(waited[0], Duration::ZERO);
    // An endpoint of its own keeps its own interval.
    let layer = layer.min_interval_for("api.test/v1/items", S(2));
    get(&layer, &server).await;
    assert!(within(get(&layer, &server).await.1.waited(), S(2), S(2)));
}

#[tokio::test(start_paused = true)]
async fn writes_are_retried_only_with_a_key_and_keep_it_across_retries() {
    let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &[("retry-after", b"1")]);
    let layer = PoliteLayer::new().backoff(Backoff::vast_sdk());
    for method in [Method::POST, Method::PATCH] {
        let (status, report) = call_with(
            &layer,
            &server,
            method,
            Full::new(Bytes::from_static(b"{}")),
        )
        .await;
        assert_eq!(
            (status, report.attempts()),
            (StatusCode::TOO_MANY_REQUESTS, 1)
        );
    }
    assert_eq!(server.requests(), 2);

    let keyed = layer.clone().idempotency_keys(true);
    let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &[("retry-after", b"1")]);
    let (_, report) = call_with(
        &keyed,
        &server,
        Method::POST,
        Full::new(Bytes::from_static(b"{}")),
    )
    .await;
    assert_eq!(report.attempts(), 4);
    let key = server.headers(0)[IDEMPOTENCY_KEY].clone();
    for n in 1..4 {
        assert_eq!(
            server.headers(n)[IDEMPOTENCY_KEY],
            key,
            "the same key on every retry"
        );
    }
    // A GET gets no key.
    let server = Scripted::always(StatusCode::OK, &[]);
    get(&keyed, &server).await;
    assert!(!server.headers(0).contains_key(IDEMPOTENCY_KEY));
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_replayed_is_sent_once() {
    let server = Scripted::always(StatusCode::TOO_MANY_REQUESTS, &[("retry-after", b"1")]);
    let layer = PoliteLayer::new().backoff(Backoff::vast_sdk());
    let streamed: BoxBody<Bytes, Infallible> = Full::new(Bytes::from_static(b"chunk")).boxed();
    let (status, report) = call_with(&layer, &server, Method::PUT, streamed).await;
    assert_eq!(
        (status, report.attempts()),
        (StatusCode::TOO_MANY_REQUESTS, 1)
    );
    // The same PUT with bytes is retried.
    let (_, report) = call_with(&layer, &server, Method::PUT, Bytes::from_static(b"chunk")).await;
    assert_eq!(report.attempts(), 4);
}
