//! The [`Store`] trait: where rate-limit state lives.
//!
//! A store decides a whole request at once: every (rule, key) pair it must pass, all-or-nothing.
//! If any enforced rule denies, no rule is charged, so a request refused by one bucket never burns
//! another. The trait is shaped so that a networked store (Redis) can answer it in one round trip.

use std::future::Future;
use std::time::Duration;

use crate::decision::Outcome;
use crate::key::Key;
use crate::rule::Rule;

/// One (rule, key) pair a request must pass.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// Who is being limited, as far as this rule is concerned.
    pub key: Key,
}

/// Idempotent replays: a request that repeats an idempotency key already charged for the same
/// request (the caller digests identity, method and route into `key`) passes the rules that
/// [honour replays](Rule::honours_replays) without being charged by them again, up to
/// `max_replays` times within `ttl`. Every other rule of the request checks and charges it like
/// any request, so a replay never gets past a rule that does not opt in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// Digest of the identity together with the idempotency key.
    pub key: Key,
    /// How long a charged request may be replayed for free.
    pub ttl: Duration,
    /// How many free replays a charged request gets; later ones are charged like any request.
    pub max_replays: u32,
}

/// Where rate-limit state lives: in this process ([`MemoryStore`](crate::MemoryStore)) or shared
/// (Redis, in `tollgate-redis`).
pub trait Store: Send + Sync + 'static {
    /// Why the store could not decide (the memory store never fails).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Whether the state is shared beyond this process (Redis), so that whoever can read the
    /// store sees the key digests: the HTTP layer then warns when it runs with the public
    /// default [`KeySecret`](crate::KeySecret). Default: `false`.
    const SHARED: bool = false;

    /// A short fixed name for the store in metrics labels (`memory`, `redis`). Default: `custom`.
    const NAME: &'static str = "custom";

    /// Decides a request that must pass every check, charging every rule's cost if and only if no
    /// enforced rule denies it. Shadow rules are charged when they admit, and never deny.
    ///
    /// With `replay`, a request whose replay key was charged within its TTL, and replayed fewer
    /// than `max_replays` times, is a free replay (`Outcome::replayed`): the rules that
    /// [honour replays](Rule::honours_replays) report their figures at cost 0 and are not
    /// charged; the others decide and charge it as usual, all-or-nothing, and a replay they deny
    /// does not use up one of the free replays. A request that is not a free replay and passes
    /// records its replay key (unless a live record exists), provided one of its rules honours
    /// replays; with none, `replay` changes nothing.
    ///
    /// Checks must name distinct rules.
    fn check(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> impl Future<Output = Result<Outcome, Self::Error>> + Send;

    /// Decides at once, for a store that can without waiting (the memory store), with the same
    /// answer [`check`](Self::check) would give, charging the same way. `None` (the default)
    /// sends the caller to `check`. A caller on a hot path, such as the HTTP layer, then needs
    /// no future at all.
    ///
    /// This is not tower's readiness (`poll_ready`): it decides a request, it does not ask
    /// whether the store could take one.
    fn check_immediately(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> Option<Result<Outcome, Self::Error>> {
        let _ = (checks, replay);
        None
    }

    /// Reports, charging nothing, whether the request would pass now and where each check stands:
    /// `remaining` is what is left now, and a check that would deny says when it would pass.
    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Outcome, Self::Error>> + Send;
}
