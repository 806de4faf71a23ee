//! App-side instructions per Redis-backed decision, for callgrind (instruction counts do not move
//! with the load of other processes, where wall-clock and `getrusage` figures do).
//!
//! ```text
//! redis-server --port 6390 --save '' --appendonly no --daemonize yes
//! cargo build --release -p tollgate-redis --example callgrind_decisions
//! REDIS_URL=redis://127.0.0.1:6390 valgrind --tool=callgrind \
//!     --toggle-collect='*callgrind_decisions::measured*' \
//!     target/release/examples/callgrind_decisions <variant> [decisions]
//! ```
//!
//! `<variant>`: `gcra` (the store, one GCRA rule, script), `vmarea` (the store, the VMArea
//! preset's two fixed windows, script), `counters` (the same two windows with
//! `fixed_window_counters`), `raw-gcra` and `raw-vmarea` (the same `FCALL` of the same Function
//! built by hand, on the same kind of connection), `raw-counters` (the counters' pipeline sent by
//! hand). Every variant runs a warm-up outside the measured function first, then `decisions`
//! (default 4096) admitted decisions from 16 concurrent callers on a current-thread runtime, so
//! that the whole client (connection task, runtime, store) runs under `measured`. The store has
//! its defaults (a `ConnectionManager`, deny cache on) except a 10 s budget, which callgrind's
//! slowdown needs, and `FailClosed`, so that a failure stops the run.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use tollgate_core::{Algorithm, Check, KeySecret, Quota, Rule, Store};
use tollgate_redis::{FailurePolicy, RedisConnection, RedisStore, FUNCTION};

const CALLERS: usize = 16;
/// Decisions per key (each key stays far below its limit).
const USES_PER_KEY: usize = 8;
const WARM_UP: usize = 1024;

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Gcra,
    VmArea,
    Counters,
    RawGcra,
    RawVmArea,
    RawCounters,
}

struct Bench {
    variant: Variant,
    store: RedisStore,
    rules: Vec<Rule>,
    /// Distinguishes the keys of one run from earlier runs' on the same Redis.
    run: u64,
}

impl Bench {
    fn key(&self, rule: usize, id: usize) -> tollgate_core::Key {
        KeySecret::DEFAULT
            .key()
            .part(&self.run.to_le_bytes())
            .part(&[rule as u8])
            .part(&((id / USES_PER_KEY) as u64).to_le_bytes())
            .finish()
    }

    /// The store's key for a rule, built as a hand-written client would (`format!`), so that
    /// the peers stay the same whatever the store's own key building does.
    fn raw_key(&self, rule: &Rule, j: usize, id: usize) -> String {
        format!(
            "{}:{}:{}",
            self.store.prefix(),
            rule.name(),
            self.key(j, id).to_hex()
        )
    }

    async fn decide(&self, id: usize) {
        match self.variant {
            Variant::Gcra | Variant::VmArea | Variant::Counters => {
                let checks: Vec<Check<'_>> = self
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(j, rule)| Check {
                        rule,
                        key: self.key(j, id),
                    })
                    .collect();
                let outcome = self.store.check(&checks, None).await.expect("a decision");
                assert!(outcome.allowed && !outcome.degraded, "{outcome:?}");
            }
            Variant::RawGcra | Variant::RawVmArea => {
                // The store's wire format (`tollgate.lua`'s header), built by hand.
                let mut cmd = redis::cmd("FCALL");
                cmd.arg(&FUNCTION.name).arg(self.rules.len());
                for (j, rule) in self.rules.iter().enumerate() {
                    cmd.arg(self.raw_key(rule, j, id));
                }
                cmd.arg("check")
                    .arg("")
                    .arg("")
                    .arg(self.rules.len())
                    .arg("none")
                    .arg(0)
                    .arg(0)
                    .arg("")
                    .arg("");
                for rule in &self.rules {
                    let quota = rule.quota();
                    if rule.algorithm() == Algorithm::Gcra {
                        cmd.arg("g00")
                            .arg(quota.emission_interval().as_nanos() as u64)
                            .arg(quota.burst());
                    } else {
                        cmd.arg(if rule.honours_replays() { "f01" } else { "f00" })
                            .arg(quota.limit())
                            .arg(quota.period().as_nanos() as u64);
                    }
                    cmd.arg(rule.cost());
                }
                let RedisConnection::Manager(conn) = self.store.connection() else {
                    unreachable!("the bench connects a ConnectionManager");
                };
                let reply: Vec<i64> = cmd.query_async(&mut conn.clone()).await.expect("FCALL");
                assert_eq!(reply[2], 1, "admitted: {reply:?}");
            }
            Variant::RawCounters => {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64;
                let mut pipe = redis::pipe();
                for (j, rule) in self.rules.iter().enumerate() {
                    let period = rule.quota().period().as_nanos() as u64;
                    let window = now / period;
                    let ttl_ms = ((window + 1) * period - now).div_ceil(1_000_000) + 2_000;
                    let key = format!("{}:{window}", self.raw_key(rule, j, id));
                    pipe.cmd("SET")
                        .arg(&key)
                        .arg(0)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .ignore();
                    pipe.cmd("INCRBY").arg(&key).arg(rule.cost());
                }
                let RedisConnection::Manager(conn) = self.store.connection() else {
                    unreachable!("the bench connects a ConnectionManager");
                };
                let counts: Vec<u64> = pipe.query_async(&mut conn.clone()).await.expect("pipe");
                for (count, rule) in counts.iter().zip(&self.rules) {
                    assert!(*count <= rule.quota().limit(), "admitted: {counts:?}");
                }
            }
        }
    }

    /// `decisions` decisions numbered from `first`, dealt round-robin over the callers.
    async fn run(&self, first: usize, decisions: usize) {
        join_all((0..CALLERS).map(|caller| async move {
            for i in (caller..decisions).step_by(CALLERS) {
                self.decide(first + i).await;
            }
        }))
        .await;
    }
}

/// The measured part: callgrind collects only inside this function (`--toggle-collect`).
#[inline(never)]
fn measured(rt: &tokio::runtime::Runtime, bench: &Bench, decisions: usize) {
    rt.block_on(bench.run(WARM_UP, decisions));
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = match args.next().as_deref() {
        Some("gcra") => Variant::Gcra,
        Some("vmarea") => Variant::VmArea,
        Some("counters") => Variant::Counters,
        Some("raw-gcra") => Variant::RawGcra,
        Some("raw-vmarea") => Variant::RawVmArea,
        Some("raw-counters") => Variant::RawCounters,
        other => panic!(
            "unknown variant {other:?}: gcra, vmarea, counters, raw-gcra, raw-vmarea or raw-counters"
        ),
    };
    let decisions: usize = args.next().map_or(4096, |n| n.parse().expect("a count"));
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let per_minute = |name: &str, limit, algorithm| {
        Rule::builder(name, Quota::per_minute(limit).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap()
    };
    let rules = match variant {
        Variant::Gcra | Variant::RawGcra => vec![per_minute("gcra", 600, Algorithm::Gcra)],
        _ => vec![
            Rule::builder("per_token", Quota::per_minute(600).unwrap())
                .algorithm(Algorithm::FixedWindow)
                .honour_replays(true)
                .build()
                .unwrap(),
            per_minute("per_ip", 100, Algorithm::FixedWindow),
        ],
    };
    let store = rt.block_on(async {
        let store = RedisStore::builder(RedisConnection::connect(url.as_str()).await.unwrap())
            .fixed_window_counters(variant == Variant::Counters)
            .failure_policy(FailurePolicy::FailClosed)
            .budget(Duration::from_secs(10))
            .build();
        store.load_script().await.unwrap();
        store
    });
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let bench = Bench {
        variant,
        store,
        rules,
        run,
    };
    rt.block_on(bench.run(0, WARM_UP));
    measured(&rt, &bench, decisions);
    println!("{decisions} decisions");
}
