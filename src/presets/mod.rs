//! Ready-made configurations of public APIs' rate limits, each a few lines for a user:
//!
//! - [`vast`]: Vast.ai's minimum interval per endpoint template and per identity, with
//!   method-specific intervals and burst caps.
//! - [`vmarea`]: VMArea's stacked per-token (600/min) and per-IP (100/min) buckets.
//!
//! A preset converts into a [`RateLimitBuilder`](crate::RateLimitBuilder) with its limits and
//! 429 body already set (`From`, so `RateLimitBuilder::from(preset)`, `preset.into()`, or the
//! preset's own `builder()`, which is the same): pick the store, trusted proxies or anything
//! else on it before `build()`. The same configurations can be written by hand from
//! [`Limit`](crate::Limit)s.
//!
//! ```
//! use tollgate::presets::vmarea::VmArea;
//! use tollgate::{RateLimitBuilder, MemoryStore};
//!
//! let limiter = RateLimitBuilder::from(VmArea::new())
//!     .store(MemoryStore::new())
//!     .trusted_proxies(["10.0.0.0/8"])
//!     .build()?;
//! # Ok::<(), tollgate::BuildError>(())
//! ```

pub mod vast;
pub mod vmarea;
