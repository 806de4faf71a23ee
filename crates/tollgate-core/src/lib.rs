//! tollgate's core: what a rate limit is, how it is decided, and where its state lives.
//!
//! - [`Quota`]: `limit` per `period`, with a burst; validated when built.
//! - [`Rule`]: a named quota, its [`Algorithm`], a cost per request, shadow mode.
//! - [`algorithm`]: GCRA, fixed window, sliding log and sliding-window counter, each a pure
//!   state machine (state, now, quota, cost) → (decision, new state), with no clock and no I/O.
//! - [`Decision`] / [`Outcome`]: what a rule, and a whole request, answer.
//! - [`Store`]: decides all of a request's (rule, key) pairs at once, all-or-nothing.
//! - [`MemoryStore`]: the in-process store; sharded, bounded, self-cleaning.
//! - [`Key`] / [`KeySecret`]: fixed-size keyed digests of client identities.
//! - [`LogThrottle`]: one log line per interval for per-request events.
//!
//! This crate knows nothing of HTTP or Redis: the `tollgate` crate puts it behind a tower layer,
//! and `tollgate-redis` implements [`Store`] on Redis.
//!
//! ```
//! use std::time::Duration;
//! use tollgate_core::{Check, KeySecret, ManualClock, MemoryStore, Quota, Rule};
//!
//! let clock = ManualClock::new(1_700_000_000_000_000_000);
//! let store = MemoryStore::builder().clock(clock.clone()).build();
//! let rule = Rule::builder("search", Quota::per_second(10)?.with_burst(2)?).build()?;
//! let key = KeySecret::DEFAULT.key().part(b"client-42").finish();
//! let checks = [Check { rule: &rule, key }];
//!
//! assert!(store.check_now(&checks, None).allowed);
//! assert!(store.check_now(&checks, None).allowed);
//! let denied = store.check_now(&checks, None);
//! assert_eq!(denied.retry_after(), Some(Duration::from_millis(100)));
//! clock.advance(Duration::from_millis(100));
//! assert!(store.check_now(&checks, None).allowed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]
// docs.rs (`--cfg docsrs`, see Cargo.toml) marks the items a feature gates.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod algorithm;
mod client_quotas;
mod clock;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod decision;
mod key;
mod memory;
mod quota;
mod rule;
mod store;
mod throttle;

pub use algorithm::Algorithm;
pub use client_quotas::{ClientQuota, ClientQuotas};
pub use clock::{saturating_nanos, Clock, ManualClock, Nanos, SystemClock};
pub use decision::{Decision, Decisions, Outcome};
pub use key::{Key, KeyBuilder, KeySecret};
pub use memory::{MemoryStats, MemoryStore, MemoryStoreBuilder};
pub use quota::{
    parse_duration, ParseQuotaError, Quota, QuotaError, MAX_BURST_SPAN_NANOS, MAX_PERIOD_NANOS,
};
pub use rule::{Rule, RuleBuilder, RuleError, MAX_RULE_NAME_LEN};
pub use store::{Check, Replay, Store};
pub use throttle::LogThrottle;
