//! The conformance table: scripted requests with exact expected answers, which every [`Store`]
//! must reproduce, so that every algorithm gives the same results on every store.
//!
//! A store under test is driven by a [`ManualClock`]: the runner sets the clock before each step.
//! The memory store takes the clock directly; a networked store runs in an explicit-time mode fed
//! from the same clock. Each case gets its own keys (salted with a per-run nonce, so a persistent
//! store can run the table repeatedly) and its own hour of time.
//!
//! Enabled by the `conformance` feature; used by the stores' test suites.

use std::fmt::Write as _;
use std::time::Duration;

use crate::clock::saturating_nanos;
use crate::{Algorithm, Check, KeySecret, ManualClock, Nanos, Quota, Replay, Rule, Store};

/// Where the table's time starts: 2023-11-15T00:00:00Z, a multiple of every period used, so fixed
/// windows line up with the step times.
pub const BASE: Nanos = 1_700_006_400 * 1_000_000_000;

/// Each case runs in its own hour after [`BASE`].
const CASE_SPAN: Nanos = 3_600 * 1_000_000_000;

/// One scripted scenario.
#[derive(Debug, Clone)]
pub struct Case {
    /// What the case shows.
    pub name: &'static str,
    /// The rules every step checks, in order.
    pub rules: Vec<Rule>,
    /// The requests, in time order.
    pub steps: Vec<Step>,
}

/// One request of a case and what must come of it.
#[derive(Debug, Clone)]
pub struct Step {
    /// When, after the case's start.
    pub at: Duration,
    /// `check` (charging) or `peek`.
    pub peek: bool,
    /// An idempotency key, for replays.
    pub replay: Option<&'static str>,
    /// Whether the request passes.
    pub allowed: bool,
    /// Whether it passes as a free replay.
    pub replayed: bool,
    /// One expectation per rule.
    pub rules: Vec<Expect>,
}

/// What one rule must report for one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expect {
    /// The rule admits the request.
    pub allowed: bool,
    /// Remaining after the request.
    pub remaining: u64,
    /// Time until reset.
    pub reset_after: Duration,
    /// Time until the request would pass, if denied.
    pub retry_after: Option<Duration>,
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An admitting rule: remaining, reset after (ms).
pub fn ok(remaining: u64, reset_ms: u64) -> Expect {
    Expect {
        allowed: true,
        remaining,
        reset_after: ms(reset_ms),
        retry_after: None,
    }
}

/// A denying rule: remaining, reset after (ms), retry after (ms).
pub fn no(remaining: u64, reset_ms: u64, retry_ms: u64) -> Expect {
    Expect {
        allowed: false,
        remaining,
        reset_after: ms(reset_ms),
        retry_after: Some(ms(retry_ms)),
    }
}

/// A charging request at `at_ms` that passes iff every enforced rule admits it.
fn req(at_ms: u64, rules: Vec<Expect>) -> Step {
    let allowed = rules.iter().all(|e| e.allowed);
    Step {
        at: ms(at_ms),
        peek: false,
        replay: None,
        allowed,
        replayed: false,
        rules,
    }
}

fn rule(name: &str, quota: Quota, algorithm: Algorithm) -> Rule {
    Rule::builder(name, quota)
        .algorithm(algorithm)
        .build()
        .expect("conformance rules are valid")
}

/// `rule` with free idempotent replays.
fn replayable(rule: Rule) -> Rule {
    Rule::builder(rule.name(), *rule.quota())
        .algorithm(rule.algorithm())
        .cost(rule.cost())
        .honour_replays(true)
        .build()
        .expect("conformance rules are valid")
}

fn q(limit: u64, period_ms: u64) -> Quota {
    Quota::new(limit, ms(period_ms)).expect("conformance quotas are valid")
}

/// The table.
pub fn cases() -> Vec<Case> {
    use Algorithm::*;
    let mut cases = vec![
        Case {
            name: "gcra: a burst of 3 at once, then one per 100 ms",
            rules: vec![rule("r", q(10, 1000).with_burst(3).unwrap(), Gcra)],
            steps: vec![
                req(0, vec![ok(2, 100)]),
                req(0, vec![ok(1, 200)]),
                req(0, vec![ok(0, 300)]),
                req(0, vec![no(0, 300, 100)]),
                req(99, vec![no(0, 201, 1)]),
                req(100, vec![ok(0, 300)]),
                req(150, vec![no(0, 250, 50)]),
                req(200, vec![ok(0, 300)]),
                req(1_000, vec![ok(2, 100)]),
            ],
        },
        Case {
            name: "gcra: cost 2 of a burst of 4",
            rules: vec![Rule::builder("r", q(10, 1000).with_burst(4).unwrap())
                .cost(2)
                .build()
                .unwrap()],
            steps: vec![
                req(0, vec![ok(2, 200)]),
                req(0, vec![ok(0, 400)]),
                req(0, vec![no(0, 400, 200)]),
                // One unit (of cost 1) is free again, but this request costs 2.
                req(199, vec![no(1, 201, 1)]),
                req(200, vec![ok(0, 400)]),
            ],
        },
        Case {
            name: "gcra: minimum interval of 500 ms",
            rules: vec![rule("r", Quota::min_interval(ms(500)).unwrap(), Gcra)],
            steps: vec![
                req(0, vec![ok(0, 500)]),
                req(499, vec![no(0, 1, 1)]),
                req(500, vec![ok(0, 500)]),
                req(2_000, vec![ok(0, 500)]),
            ],
        },
        Case {
            name: "fixed window: 3 per second, reset on the second",
            rules: vec![rule("r", q(3, 1000), FixedWindow)],
            steps: vec![
                req(250, vec![ok(2, 750)]),
                req(300, vec![ok(1, 700)]),
                req(600, vec![ok(0, 400)]),
                req(900, vec![no(0, 100, 100)]),
                req(999, vec![no(0, 1, 1)]),
                req(1_000, vec![ok(2, 1000)]),
                req(1_999, vec![ok(1, 1)]),
                req(2_000, vec![ok(2, 1000)]),
            ],
        },
        Case {
            name: "sliding log: 3 in any second, exactly",
            rules: vec![rule("r", q(3, 1000), SlidingLog)],
            steps: vec![
                req(0, vec![ok(2, 1000)]),
                req(400, vec![ok(1, 1000)]),
                req(800, vec![ok(0, 1000)]),
                req(900, vec![no(0, 900, 100)]),
                req(999, vec![no(0, 801, 1)]),
                req(1_000, vec![ok(0, 1000)]),
                req(1_399, vec![no(0, 601, 1)]),
                req(1_400, vec![ok(0, 1000)]),
                req(3_000, vec![ok(2, 1000)]),
            ],
        },
        Case {
            name: "sliding log: cost 2 of 4, freed by the oldest entries",
            rules: vec![Rule::builder("r", q(4, 1000))
                .algorithm(SlidingLog)
                .cost(2)
                .build()
                .unwrap()],
            steps: vec![
                req(0, vec![ok(2, 1000)]),
                req(100, vec![ok(0, 1000)]),
                req(500, vec![no(0, 600, 500)]),
                req(1_000, vec![ok(0, 1000)]),
            ],
        },
        Case {
            name: "sliding window counter: previous window weighted, rounded up",
            rules: vec![Rule::builder("r", q(10, 1000))
                .algorithm(SlidingWindow)
                .cost(4)
                .build()
                .unwrap()],
            steps: vec![
                req(900, vec![ok(6, 1100)]),
                req(950, vec![ok(2, 1050)]),
                // ceil(8 * 900/1000) = 8 used: wait until ceil(8 * left/1000) <= 6, left = 750.
                req(1_100, vec![no(2, 900, 150)]),
                req(1_249, vec![no(3, 751, 1)]),
                req(1_250, vec![ok(0, 1750)]),
            ],
        },
        Case {
            name: "sliding window counter: denial waits into the next window",
            rules: vec![Rule::builder("r", q(10, 1000))
                .algorithm(SlidingWindow)
                .cost(5)
                .build()
                .unwrap()],
            steps: vec![
                req(100, vec![ok(5, 1900)]),
                req(200, vec![ok(0, 1800)]),
                req(300, vec![no(0, 1700, 1200)]),
                req(1_500, vec![ok(0, 1500)]),
                req(1_600, vec![no(1, 1400, 400)]),
                req(2_000, vec![ok(0, 2000)]),
            ],
        },
        Case {
            name: "stacked rules: a request one rule denies charges no rule",
            rules: vec![
                rule("a", q(5, 1000), Gcra),
                rule("b", q(2, 1000), FixedWindow),
            ],
            steps: vec![
                req(0, vec![ok(4, 200), ok(1, 1000)]),
                req(0, vec![ok(3, 400), ok(0, 1000)]),
                // `a` would admit (3 → 2) but `b` denies: `a` keeps 3.
                req(0, vec![ok(2, 600), no(0, 1000, 1000)]),
                req(0, vec![ok(2, 600), no(0, 1000, 1000)]),
                req(1_000, vec![ok(4, 200), ok(1, 1000)]),
            ],
        },
        Case {
            name:
                "several rules: the longest wait binds a denial, the fewest remaining an admission",
            rules: vec![
                rule("a", q(1, 1000), FixedWindow),
                rule("b", q(1, 2000), FixedWindow),
                rule("c", q(1, 500), Gcra),
            ],
            steps: vec![
                // All admit with 0 left: the longest reset (b) binds.
                req(0, vec![ok(0, 1000), ok(0, 2000), ok(0, 500)]),
                // All deny: b, with the longest wait, binds (Retry-After is never too early).
                req(
                    0,
                    vec![no(0, 1000, 1000), no(0, 2000, 2000), no(0, 500, 500)],
                ),
                req(1_000, vec![ok(0, 1000), no(0, 1000, 1000), ok(0, 500)]),
            ],
        },
        Case {
            name: "several rules: ties go to the earlier rule when admitted, the later when denied",
            rules: vec![
                rule("x", q(1, 1000), FixedWindow),
                rule("y", q(1, 1000), FixedWindow),
            ],
            steps: vec![
                req(0, vec![ok(0, 1000), ok(0, 1000)]),
                req(0, vec![no(0, 1000, 1000), no(0, 1000, 1000)]),
            ],
        },
        Case {
            name: "peek reports without charging",
            rules: vec![rule("r", q(2, 1000), FixedWindow)],
            steps: vec![
                Step {
                    peek: true,
                    ..req(0, vec![ok(2, 1000)])
                },
                req(0, vec![ok(1, 1000)]),
                Step {
                    peek: true,
                    ..req(10, vec![ok(1, 990)])
                },
                req(20, vec![ok(0, 980)]),
                // Exhausted: a peek says the next request would be denied, and when it would pass.
                Step {
                    peek: true,
                    ..req(30, vec![no(0, 970, 970)])
                },
            ],
        },
        Case {
            name: "shadow rules are charged and reported, never enforced",
            rules: vec![
                rule("enforced", q(3, 1000), FixedWindow),
                Rule::builder("shadow", q(1, 1000))
                    .algorithm(FixedWindow)
                    .shadow(true)
                    .build()
                    .unwrap(),
            ],
            steps: vec![
                req(0, vec![ok(2, 1000), ok(0, 1000)]),
                Step {
                    allowed: true,
                    ..req(0, vec![ok(1, 1000), no(0, 1000, 1000)])
                },
                Step {
                    allowed: true,
                    ..req(0, vec![ok(0, 1000), no(0, 1000, 1000)])
                },
                req(0, vec![no(0, 1000, 1000), no(0, 1000, 1000)]),
            ],
        },
        Case {
            name: "idempotent replays pass free up to the cap, then are charged",
            rules: vec![replayable(rule("r", q(2, 1000), FixedWindow))],
            steps: vec![
                Step {
                    replay: Some("k1"),
                    ..req(0, vec![ok(1, 1000)])
                },
                Step {
                    replay: Some("k1"),
                    replayed: true,
                    ..req(10, vec![ok(1, 990)])
                },
                Step {
                    replay: Some("k1"),
                    replayed: true,
                    ..req(20, vec![ok(1, 980)])
                },
                // Cap (2 replays) reached: charged like any request.
                Step {
                    replay: Some("k1"),
                    ..req(30, vec![ok(0, 970)])
                },
                Step {
                    replay: Some("k2"),
                    ..req(40, vec![no(0, 960, 960)])
                },
                // A denied request leaves no record: k2 is not free now.
                Step {
                    replay: Some("k2"),
                    ..req(50, vec![no(0, 950, 950)])
                },
            ],
        },
        Case {
            name: "a replay is free only in the rules that honour replays; the others charge it",
            rules: vec![
                replayable(rule("per_token", q(5, 1000), FixedWindow)),
                rule("per_ip", q(2, 1000), FixedWindow),
            ],
            steps: vec![
                Step {
                    replay: Some("k1"),
                    ..req(0, vec![ok(4, 1000), ok(1, 1000)])
                },
                Step {
                    replay: Some("k1"),
                    replayed: true,
                    ..req(10, vec![ok(4, 990), ok(0, 990)])
                },
                // The per-IP bucket is spent: the replay is denied and takes no free replay.
                Step {
                    replay: Some("k1"),
                    ..req(20, vec![ok(4, 980), no(0, 980, 980)])
                },
                Step {
                    replay: Some("k1"),
                    replayed: true,
                    ..req(1_000, vec![ok(5, 1000), ok(1, 1000)])
                },
                // Both free replays taken: charged by every rule.
                Step {
                    replay: Some("k1"),
                    ..req(1_010, vec![ok(4, 990), ok(0, 990)])
                },
                Step {
                    replay: Some("k2"),
                    ..req(1_020, vec![ok(3, 980), no(0, 980, 980)])
                },
            ],
        },
        Case {
            name: "a replay offered to rules that do not honour replays changes nothing",
            rules: vec![rule("r", q(2, 1000), FixedWindow)],
            steps: vec![
                Step {
                    replay: Some("k1"),
                    ..req(0, vec![ok(1, 1000)])
                },
                Step {
                    replay: Some("k1"),
                    ..req(10, vec![ok(0, 990)])
                },
                Step {
                    replay: Some("k1"),
                    ..req(20, vec![no(0, 980, 980)])
                },
            ],
        },
    ];
    // Every algorithm: one admitted request reports limit - 1 and nothing is charged on peek.
    for algorithm in Algorithm::ALL {
        let reset = match algorithm {
            Algorithm::Gcra => 1_000, // one of 60 at 1 s each
            Algorithm::SlidingWindow => 120_000,
            _ => 60_000,
        };
        // Nothing used yet: only a fixed window has a reset in view.
        let peek_reset = if algorithm == Algorithm::FixedWindow {
            60_000
        } else {
            0
        };
        cases.push(Case {
            name: "every algorithm: the first request of 60 per minute",
            rules: vec![rule("m", q(60, 60_000), algorithm)],
            steps: vec![
                Step {
                    peek: true,
                    ..req(0, vec![ok(60, peek_reset)])
                },
                req(0, vec![ok(59, reset)]),
            ],
        });
    }
    cases
}

/// The rule whose figures a client must see, worked out from the expectations alone (a second
/// reading of [`Outcome::new`](crate::Outcome::new)'s contract, so the two check each other):
/// denied, the enforced denial with the longest wait, ties to the later rule; admitted, the
/// enforced rule with the fewest remaining, then the longest reset, ties to the earlier rule.
fn expected_binding(rules: &[Rule], expect: &[Expect]) -> Option<usize> {
    let enforced: Vec<(usize, &Expect)> = expect
        .iter()
        .enumerate()
        .filter(|(i, _)| !rules[*i].is_shadow())
        .collect();
    let mut best: Option<(usize, &Expect)> = None;
    if enforced.iter().any(|(_, e)| !e.allowed) {
        for &(i, e) in enforced.iter().filter(|(_, e)| !e.allowed) {
            if best.is_none_or(|(_, b)| e.retry_after >= b.retry_after) {
                best = Some((i, e));
            }
        }
    } else {
        for &(i, e) in &enforced {
            let better = best.is_none_or(|(_, b)| {
                e.remaining < b.remaining
                    || (e.remaining == b.remaining && e.reset_after > b.reset_after)
            });
            if better {
                best = Some((i, e));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// Replays per idempotency key in the table.
pub const MAX_REPLAYS: u32 = 2;

/// Runs every case against `store`, whose time must follow `clock`. `nonce` keeps this run's keys
/// apart from earlier runs' (pass something fresh, e.g. the current time, for persistent stores).
/// Returns every mismatch, one line each.
pub async fn run<S: Store>(store: &S, clock: &ManualClock, nonce: u64) -> Result<(), String> {
    let mut failures = String::new();
    for (index, case) in cases().into_iter().enumerate() {
        let start = BASE + index as u64 * CASE_SPAN;
        let key = KeySecret::DEFAULT
            .key()
            .part(&nonce.to_le_bytes())
            .part(&index.to_le_bytes())
            .finish();
        let checks: Vec<Check<'_>> = case.rules.iter().map(|rule| Check { rule, key }).collect();
        for (n, step) in case.steps.iter().enumerate() {
            clock.set(start + saturating_nanos(step.at));
            let replay = step.replay.map(|k| Replay {
                key: KeySecret::DEFAULT
                    .key()
                    .part(&nonce.to_le_bytes())
                    .part(&index.to_le_bytes())
                    .part(k.as_bytes())
                    .finish(),
                ttl: Duration::from_secs(60),
                max_replays: MAX_REPLAYS,
            });
            let result = if step.peek {
                store.peek(&checks).await
            } else {
                store.check(&checks, replay.as_ref()).await
            };
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    let _ = writeln!(failures, "{} / step {n}: store error: {e}", case.name);
                    continue;
                }
            };
            let got: Vec<Expect> = outcome
                .decisions
                .iter()
                .map(|d| Expect {
                    allowed: d.allowed,
                    remaining: d.remaining,
                    reset_after: d.reset_after,
                    retry_after: d.retry_after,
                })
                .collect();
            let binding = expected_binding(&case.rules, &step.rules);
            if outcome.allowed != step.allowed
                || outcome.replayed != step.replayed
                || got != step.rules
                || outcome.binding != binding
            {
                let _ = writeln!(
                    failures,
                    "{} / step {n} at {:?}: expected allowed={} replayed={} binding={binding:?} {:?}, got allowed={} replayed={} binding={:?} {:?}",
                    case.name, step.at, step.allowed, step.replayed, step.rules,
                    outcome.allowed, outcome.replayed, outcome.binding, got
                );
            }
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}
