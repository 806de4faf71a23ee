//! The Lua script and its wire format: how a request's checks become one `FCALL` (or
//! `EVALSHA`), and how the reply becomes [`Decision`]s.
//!
//! This module owns the protocol only (no connections, no policy). The script itself is
//! `tollgate.lua` beside this file; its header documents the arguments and the reply.
//!
//! # Exactness
//!
//! The script reproduces the core's pure state machines (`tollgate_core::algorithm`) to the
//! nanosecond. Lua numbers are doubles, so absolute instants (~1.7e18 ns) are never held as one
//! number: the script keeps them as (seconds, nanoseconds) pairs, stores them as their decimal
//! nanosecond count, and computes only differences from now, which the core bounds below 2^53
//! (`MAX_PERIOD_NANOS`, `MAX_BURST_SPAN_NANOS`). Every figure it returns (remaining, reset,
//! retry) is an integer below 2^53, exact in Redis's integer reply. The test suite checks the
//! result against the core, decision by decision, on random traffic.

use std::sync::LazyLock;
use std::time::Duration;

use redis::{Cmd, Script, ScriptInvocation, ToRedisArgs};
use tollgate_core::{saturating_nanos, Algorithm, Decision, Nanos, Replay, Rule};

use crate::error::RedisStoreError;

/// The script as `EVALSHA` runs it, loaded once per Redis node (`SCRIPT LOAD` on `NOSCRIPT`).
pub(crate) static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(LUA_SOURCE));

/// The script's source as `EVAL`/`EVALSHA` runs it (Redis 6, or a Redis that refuses Functions),
/// for operators who want to inspect or preload it. [`FUNCTION`] is the same code as a Redis
/// Function library.
pub const LUA_SOURCE: &str = concat!(
    include_str!("tollgate.lua"),
    "\nreturn tollgate(KEYS, ARGV)\n"
);

/// The script as a Redis Function library (Redis 7 and later), the store's first choice:
/// `FUNCTION LOAD` runs its body once, so a call (`FCALL`) runs only the decision, where
/// `EVALSHA` runs the whole body, its helpers' definitions included, on every call. The library
/// and its one function are named after the code's SHA1, so that instances running different
/// versions never call each other's code.
pub static FUNCTION: LazyLock<Library> = LazyLock::new(|| {
    let name = format!("tollgate_{}", &SCRIPT.get_hash()[..16]);
    let code = format!(
        "#!lua name={name}\n{}\nredis.register_function('{name}', tollgate)\n",
        include_str!("tollgate.lua")
    );
    Library { name, code }
});

/// A Redis Function library: see [`FUNCTION`].
#[derive(Debug)]
pub struct Library {
    /// The library's name, which is also its function's (`FCALL <name> ...`).
    pub name: String,
    /// The library's code, for `FUNCTION LOAD`.
    pub code: String,
}

/// The longest idempotency-record lifetime passed to Redis (2^52 ns, about 52 days), so that it
/// stays exact in Lua.
const MAX_REPLAY_TTL_NANOS: u64 = 1 << 52;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What a script call does (the script's header documents each mode).
///
/// The store's request path speaks it too: a decision is made in [`Mode::Check`] or
/// [`Mode::Peek`], locally as in Redis; the other modes are the Cluster exchange's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Decide and charge, all-or-nothing.
    Check,
    /// Decide without charging (`Store::peek`).
    Peek,
    /// Reverse a charge (Cluster partial denial).
    Refund,
    /// Take one free replay from an idempotency record (Cluster).
    TakeReplay,
    /// Give back a replay taken for a request that another slot denied (Cluster).
    ReturnReplay,
    /// Create an idempotency record unless a live one exists (Cluster).
    CreateReplay,
}

impl Mode {
    /// The mode's name in the script's `ARGV[1]`.
    fn name(self) -> &'static str {
        match self {
            Mode::Check => "check",
            Mode::Peek => "peek",
            Mode::Refund => "refund",
            Mode::TakeReplay => "take_replay",
            Mode::ReturnReplay => "return_replay",
            Mode::CreateReplay => "create_replay",
        }
    }

    /// Whether the reply carries one decision per target.
    fn decides(self) -> bool {
        matches!(self, Mode::Check | Mode::Peek)
    }
}

/// How a [`Mode::Check`] call treats an idempotent replay.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ReplayArg<'a> {
    /// No replay (or no rule of the call honours replays).
    None,
    /// The idempotency record at this key decides whether the request is a free replay in the
    /// rules that honour replays, and is updated if the request passes; the replay modes take
    /// the record's key alone.
    Record(&'a str, &'a Replay),
    /// Cluster: an earlier call took the free replay, so the rules that honour replays pass
    /// free.
    Taken,
}

/// One rule to check, with its Redis key.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub rule: Rule,
    pub key: String,
}

/// One script call's inputs, made by one constructor per mode (so no call carries fillers it
/// does not use).
pub(crate) struct Call<'a> {
    mode: Mode,
    /// Explicit time (tests), or `None` for Redis `TIME`.
    now: Option<Nanos>,
    /// The rules and their keys.
    targets: &'a [Target],
    /// The idempotent replay, if any.
    replay: ReplayArg<'a>,
    /// Refunds: when the charge was made.
    charged_at: Option<Nanos>,
}

impl<'a> Call<'a> {
    /// Decide `targets` in `mode`: [`Mode::Check`] charges them (with `replay`),
    /// [`Mode::Peek`] only looks (and ignores `replay`).
    pub(crate) fn decide(
        mode: Mode,
        now: Option<Nanos>,
        targets: &'a [Target],
        replay: ReplayArg<'a>,
    ) -> Self {
        debug_assert!(mode.decides(), "{mode:?} is not a decision");
        let replay = match mode {
            Mode::Check => replay,
            _ => ReplayArg::None,
        };
        Self::new(mode, now, targets, replay, None)
    }

    /// Reverse the charge of `targets` made at `charged_at`.
    pub(crate) fn refund(now: Option<Nanos>, targets: &'a [Target], charged_at: Nanos) -> Self {
        Self::new(
            Mode::Refund,
            now,
            targets,
            ReplayArg::None,
            Some(charged_at),
        )
    }

    /// Take one free replay from the idempotency record at `key`, if it allows one.
    pub(crate) fn take_replay(now: Option<Nanos>, key: &'a str, replay: &'a Replay) -> Self {
        Self::record(Mode::TakeReplay, now, key, replay)
    }

    /// Give back a replay taken from the record at `key` for a request another slot denied.
    pub(crate) fn return_replay(now: Option<Nanos>, key: &'a str, replay: &'a Replay) -> Self {
        Self::record(Mode::ReturnReplay, now, key, replay)
    }

    /// Create the idempotency record at `key` unless a live one exists.
    pub(crate) fn create_replay(now: Option<Nanos>, key: &'a str, replay: &'a Replay) -> Self {
        Self::record(Mode::CreateReplay, now, key, replay)
    }

    /// One of the idempotency-record modes, on the record at `key` (no targets).
    fn record(mode: Mode, now: Option<Nanos>, key: &'a str, replay: &'a Replay) -> Self {
        Self::new(mode, now, &[], ReplayArg::Record(key, replay), None)
    }

    fn new(
        mode: Mode,
        now: Option<Nanos>,
        targets: &'a [Target],
        replay: ReplayArg<'a>,
        charged_at: Option<Nanos>,
    ) -> Self {
        Self {
            mode,
            now,
            targets,
            replay,
            charged_at,
        }
    }

    /// Parses the script's reply to this call: one decision per target when the mode decides,
    /// none for refunds and idempotency records.
    pub(crate) fn reply(&self, values: &[i64]) -> Result<Reply, RedisStoreError> {
        let decided = if self.mode.decides() {
            self.targets
        } else {
            &[]
        };
        Reply::parse(values, decided)
    }
}

fn split(t: Nanos) -> (u64, u64) {
    (t / NANOS_PER_SEC, t % NANOS_PER_SEC)
}

/// A rule's code in the script's `ARGV`: the letter of its algorithm's state tag (`g1:`, `f1:`,
/// `l1:`, `w1:`), then whether it is a shadow rule and whether it honours replays (`0|1` each).
fn rule_code(rule: &Rule) -> &'static str {
    let codes: [&'static str; 4] = match rule.algorithm() {
        Algorithm::FixedWindow => ["f00", "f01", "f10", "f11"],
        Algorithm::SlidingLog => ["l00", "l01", "l10", "l11"],
        Algorithm::SlidingWindow => ["w00", "w01", "w10", "w11"],
        // GCRA, and any algorithm added to the core later is refused by `supported`.
        _ => ["g00", "g01", "g10", "g11"],
    };
    codes[usize::from(rule.is_shadow()) * 2 + usize::from(rule.honours_replays())]
}

/// Whether the script implements `algorithm` (every algorithm the core has today).
pub(crate) fn supported(algorithm: Algorithm) -> bool {
    matches!(
        algorithm,
        Algorithm::Gcra | Algorithm::FixedWindow | Algorithm::SlidingLog | Algorithm::SlidingWindow
    )
}

/// Where a call's keys, then its arguments, are written: an `EVALSHA` invocation or an `FCALL`.
trait Sink {
    fn key(&mut self, key: &str) -> &mut Self;
    fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self;
}

impl Sink for ScriptInvocation<'_> {
    fn key(&mut self, key: &str) -> &mut Self {
        ScriptInvocation::key(self, key)
    }
    fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        ScriptInvocation::arg(self, arg)
    }
}

impl Sink for Cmd {
    fn key(&mut self, key: &str) -> &mut Self {
        Cmd::arg(self, key)
    }
    fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        Cmd::arg(self, arg)
    }
}

impl Call<'_> {
    /// The `EVALSHA` invocation.
    pub(crate) fn invocation(&self) -> ScriptInvocation<'static> {
        let mut inv = SCRIPT.prepare_invoke();
        self.write(&mut inv);
        inv
    }

    /// The `FCALL` of [`FUNCTION`].
    pub(crate) fn fcall(&self) -> Cmd {
        let keys = self.targets.len() + usize::from(matches!(self.replay, ReplayArg::Record(..)));
        let mut cmd = redis::cmd("FCALL");
        cmd.arg(&FUNCTION.name).arg(keys);
        self.write(&mut cmd);
        cmd
    }

    /// The keys, then the arguments, in the order of the script's header.
    fn write(&self, sink: &mut impl Sink) {
        for target in self.targets {
            sink.key(&target.key);
        }
        if let ReplayArg::Record(key, _) = self.replay {
            sink.key(key);
        }
        sink.arg(self.mode.name());
        match self.now {
            Some(now) => {
                let (s, n) = split(now);
                sink.arg(s).arg(n);
            }
            None => {
                sink.arg("").arg("");
            }
        }
        sink.arg(self.targets.len());
        match self.replay {
            ReplayArg::Record(_, r) => {
                let ttl = saturating_nanos(r.ttl).clamp(1, MAX_REPLAY_TTL_NANOS);
                sink.arg("record").arg(ttl).arg(r.max_replays);
            }
            ReplayArg::Taken => {
                sink.arg("taken").arg(0).arg(0);
            }
            ReplayArg::None => {
                sink.arg("none").arg(0).arg(0);
            }
        }
        match self.charged_at {
            Some(t) => {
                let (s, n) = split(t);
                sink.arg(s).arg(n);
            }
            None => {
                sink.arg("").arg("");
            }
        }
        for target in self.targets {
            let rule = &target.rule;
            let quota = rule.quota();
            let (a, b) = match rule.algorithm() {
                Algorithm::Gcra => (saturating_nanos(quota.emission_interval()), quota.burst()),
                _ => (quota.limit(), saturating_nanos(quota.period())),
            };
            sink.arg(rule_code(rule)).arg(a).arg(b).arg(rule.cost());
        }
    }
}

/// A script reply.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    /// The time the script decided at (Redis `TIME`, or the explicit time).
    pub now: Nanos,
    /// No enforced rule of this call denied (or, for `TakeReplay`, a replay was taken).
    pub allowed: bool,
    /// The request was admitted free, as a replay.
    pub replayed: bool,
    /// One per check, in order.
    pub decisions: Vec<Decision>,
}

impl Reply {
    /// Parses the script's integer array against the checks it was called with.
    fn parse(values: &[i64], targets: &[Target]) -> Result<Self, RedisStoreError> {
        let bad = |what: &str| {
            RedisStoreError::Protocol(format!(
                "{what} (got {} integers for {} checks); is another version of the tollgate script loaded under the same SHA?",
                values.len(),
                targets.len()
            ))
        };
        if values.len() != 4 + 4 * targets.len() {
            return Err(bad("wrong reply length"));
        }
        let non_negative = |v: i64| u64::try_from(v).map_err(|_| bad("negative figure"));
        let now = non_negative(values[0])?
            .checked_mul(NANOS_PER_SEC)
            .and_then(|s| s.checked_add(values[1] as u64))
            .ok_or_else(|| bad("time out of range"))?;
        let mut decisions = Vec::with_capacity(targets.len());
        for (target, figures) in targets.iter().zip(values[4..].chunks_exact(4)) {
            let allowed = figures[0] == 1;
            let retry = non_negative(figures[3])?;
            decisions.push(Decision {
                allowed,
                limit: target.rule.algorithm().capacity(target.rule.quota()),
                remaining: non_negative(figures[1])?,
                reset_after: Duration::from_nanos(non_negative(figures[2])?),
                retry_after: (!allowed).then(|| Duration::from_nanos(retry.max(1))),
            });
        }
        Ok(Self {
            now,
            allowed: values[2] == 1,
            replayed: values[3] == 1,
            decisions,
        })
    }
}
