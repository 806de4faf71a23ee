//! What clients are told: rate-limit headers on every response, and the 429 (or 503, or 500)
//! the layer answers by itself.
//!
//! Admitted responses carry `X-RateLimit-Limit`, `X-RateLimit-Remaining` and
//! `X-RateLimit-Reset`, figures of the most restrictive applicable rule
//! ([`Outcome::binding`](tollgate_core::Outcome::binding)). A denial adds `Retry-After` in whole
//! seconds, rounded up and at least 1 (a rounded-down value makes clients retry too early and
//! fail again), and a body built by the denial responder: a JSON default, a preset's, or a
//! closure given to [`RateLimitBuilder::on_denied`](crate::RateLimitBuilder::on_denied).
//!
//! - `headers`: the header fields ([`HeaderStyle`], [`ResetFormat`], the names below).
//! - `denial`: [`Denial`], what a responder builds its 429 from, and the layer's own answers.
//! - `json`: every JSON body, written by `serde_json`.

mod denial;
mod headers;
mod json;

pub use denial::Denial;
pub use headers::{
    HeaderStyle, ResetFormat, RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT,
    X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};

pub(crate) use denial::{
    cost_never_passes, default_denial, default_responder, missing_peer_addr, unavailable,
    unreadable_cost, Responder, MISSING_PEER_ADDR,
};
pub(crate) use headers::{
    policy_item, Binding, HeaderWriter, LimitValue, RateLimitHeaders, Reported,
};
pub(crate) use json::{to_bytes as json_bytes, FailureTemplate};
