//! Ready-made configurations of public APIs' rate limits, each a few lines for a user:
//!
//! - [`vast`]: Vast.ai's minimum interval per endpoint template and per identity, with
//!   method-specific intervals and burst caps.
//! - [`vmarea`]: VMArea's stacked per-token (600/min) and per-IP (100/min) buckets.
//!
//! A preset is a [`RateLimitBuilder`](crate::RateLimitBuilder) with limits and a 429 body
//! already set: pick the store, trusted proxies or anything else on it before `build()`. The
//! same configurations can be written by hand from [`Limit`](crate::Limit)s.

pub mod vast;
pub mod vmarea;
