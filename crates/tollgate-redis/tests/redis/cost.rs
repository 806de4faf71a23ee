//! What one decision costs Redis, and the app, against plain peer scripts: a measurement, run by
//! hand (release build, so that the app's figure is the production one):
//!
//! ```text
//! cargo test --release -p tollgate-redis --test redis cost_per_decision -- --ignored \
//!     --nocapture --test-threads 1
//! ```
//!
//! `cost_per_decision` measures one Redis, `cost_per_decision_on_a_cluster` the 3-master
//! Cluster of the test suite (Redis CPU summed over the masters), and
//! `cluster_capacity_grows_with_masters` each master's CPU on 1-, 2- and 3-master Clusters.
//!
//! Every variant runs [`DECISIONS`] admitted decisions from [`CALLERS`] concurrent tasks, in
//! [`ROUNDS`] interleaved rounds (the median round is reported), on one Redis:
//!
//! - tollgate's store ([`RedisStore::check`], deny cache off) with one rule of each algorithm
//!   (600 per minute), and the VMArea preset's two fixed windows (600 and 100 per minute);
//! - the same store with [`fixed_window_counters`](tollgate_redis::RedisStoreBuilder::fixed_window_counters)
//!   on: one fixed window, and the VMArea preset's two (`SET NX PX` + `INCRBY` per window, one
//!   pipeline, no script);
//! - the peers, plain scripts of the usual shape sent as `EVALSHA` on a multiplexed connection:
//!   a GCRA script (`TIME`, `GET`, `SET PX`) on one key and on two keys (the two buckets of a
//!   VMArea-like request), the same three commands with no arithmetic (the floor of any such
//!   script), a two-window `INCRBY` + `PEXPIRE` script, one `INCR`, and the counters' two
//!   windows sent by hand as a pipeline in three shapes (`SET NX PX` + `INCRBY`, the store's;
//!   `INCRBY` + `PEXPIRE`; `SET NX PX` + `INCRBY` in `MULTI`/`EXEC`).
//!
//! **Redis CPU** per decision is the `usec` of the command the decision sent (`FCALL` or
//! `EVALSHA`, or `INCR`) in `INFO commandstats`, reset by `CONFIG RESETSTAT` before each measurement: Redis's
//! own time executing it, script and inner commands included, which the load of other processes
//! on the machine barely moves (a preemption in the middle of a command still lands in it).
//! For counters it is the sum over their commands (`SET`, `INCRBY`, ...). It leaves out what
//! Redis spends reading, parsing and answering each command, which grows with the number of
//! commands: **Redis process CPU** (`used_cpu_user` + `used_cpu_sys` of `INFO cpu`, over the
//! measurement) counts everything, background work included, and is the fairer figure between
//! one `FCALL` and a pipeline of four commands. **Commands** counts every command Redis executed per decision,
//! the script's inner ones included. **App CPU** is this process's user + system CPU time
//! (`getrusage`) over the measurement, per decision: client, runtime and (for the store) the
//! store's own work.
//!
//! Keys are used [`USES_PER_KEY`] times each (warm: the script reads state it wrote) and, in a
//! second column, once each (fresh: nothing to read); every decision is admitted either way.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::Script;
use tollgate_core::{Algorithm, Check, KeySecret, Quota, Rule, Store};
use tollgate_redis::{FailurePolicy, RedisConnection, RedisStore};

use crate::support::{command_stats, patient, patient_cluster, TestCluster, TestRedis};

/// Decisions per measurement.
const DECISIONS: usize = 8192;
/// Concurrent callers (decisions are dealt round-robin).
const CALLERS: usize = 16;
/// Interleaved rounds per variant; the median is reported.
const ROUNDS: usize = 3;
/// Decisions per key in the warm measurement.
const USES_PER_KEY: usize = 8;

/// A GCRA script of the usual shape: Redis `TIME` in microseconds, the theoretical arrival time
/// as a plain number, `SET PX`. ARGV: emission interval (µs), burst.
const PEER_GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local out = {}
local allowed = 1
local tats = {}
for i = 1, #KEYS do
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  local new = tat + interval
  if new - now > tolerance then allowed = 0 end
  tats[i] = new
  out[#out + 1] = math.floor((tolerance - (new - now)) / interval)
end
if allowed == 1 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], tats[i], 'PX', math.ceil((tats[i] - now) / 1000))
  end
end
table.insert(out, 1, allowed)
return out
";

/// The floor of any GCRA script on Redis's clock: the three commands (`TIME`, `GET`, `SET PX`)
/// and no arithmetic at all. Not a limiter: what a script pays before it computes anything.
const PEER_FLOOR: &str = r"
local t = redis.call('TIME')
redis.call('GET', KEYS[1])
redis.call('SET', KEYS[1], t[1], 'PX', 60000)
return {1}
";

/// Fixed windows of the usual shape: `INCRBY` each key, `PEXPIRE` it when the window is new, no
/// refund on denial. ARGV: cost, window (ms), then one limit per key.
const PEER_WINDOWS: &str = r"
local cost = tonumber(ARGV[1])
local allowed = 1
local out = {}
for i = 1, #KEYS do
  local count = redis.call('INCRBY', KEYS[i], cost)
  if count == cost then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
  if count > tonumber(ARGV[2 + i]) then allowed = 0 end
  out[#out + 1] = count
end
table.insert(out, 1, allowed)
return out
";

/// One measured variant: its name, the peer its ratio is against, and one decision.
struct Variant {
    name: String,
    /// Index of the variant this one is compared with (`None`: it is a peer).
    peer: Option<usize>,
    /// The commands a decision may send (those whose `usec` is its Redis CPU).
    commands: &'static [&'static str],
    run: Decide,
}

/// A connection the peers send their commands on (single node or Cluster).
trait Peer: ConnectionLike + Clone + Send + Sync + 'static {}
impl<C: ConnectionLike + Clone + Send + Sync + 'static> Peer for C {}

/// One decision: (round, key id) -> done, asserting that it was admitted.
type Decide = Arc<dyn Fn(usize, usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

fn store_variant(
    store: &RedisStore,
    name: &str,
    rules: Vec<Rule>,
    peer: usize,
    commands: &'static [&'static str],
) -> Variant {
    let store = store.clone();
    let rules = Arc::new(rules);
    let tag = name.to_owned();
    Variant {
        name: format!("tollgate: {name}"),
        peer: Some(peer),
        commands,
        run: Arc::new(move |round, id| {
            let (store, rules, tag) = (store.clone(), Arc::clone(&rules), tag.clone());
            Box::pin(async move {
                let keys: Vec<_> = (0..rules.len())
                    .map(|j| {
                        KeySecret::DEFAULT
                            .key()
                            .part(tag.as_bytes())
                            .part(&[round as u8, j as u8])
                            .part(&(id as u64).to_le_bytes())
                            .finish()
                    })
                    .collect();
                let checks: Vec<Check<'_>> = rules
                    .iter()
                    .zip(&keys)
                    .map(|(rule, &key)| Check { rule, key })
                    .collect();
                let outcome = store.check(&checks, None).await.expect("a decision");
                assert!(outcome.allowed, "{tag}: {outcome:?}");
            })
        }),
    }
}

fn script_variant<C: Peer>(
    conn: &C,
    name: &str,
    source: &str,
    keys: usize,
    args: &[u64],
) -> Variant {
    let conn = conn.clone();
    let script = Arc::new(Script::new(source));
    let args: Arc<[u64]> = args.into();
    let tag = name.to_owned();
    Variant {
        name: format!("peer: {name}"),
        peer: None,
        commands: &["evalsha"],
        run: Arc::new(move |round, id| {
            let (mut conn, script, args, tag) = (
                conn.clone(),
                Arc::clone(&script),
                Arc::clone(&args),
                tag.clone(),
            );
            Box::pin(async move {
                let mut inv = script.prepare_invoke();
                for j in 0..keys {
                    // One hash tag per decision: in Cluster its keys share a slot.
                    inv.key(format!("peer:{{{tag}:{round}:{id}}}:{j}"));
                }
                for a in args.iter() {
                    inv.arg(*a);
                }
                let reply: Vec<i64> = inv.invoke_async(&mut conn).await.expect("the peer script");
                assert_eq!(reply[0], 1, "{tag}: {reply:?}");
            })
        }),
    }
}

/// The counters' commands for a two-window decision sent by hand as one pipeline, in one of
/// the shapes a counter path could take: what the store's own row costs without the store.
#[derive(Debug, Clone, Copy)]
enum CounterShape {
    /// `SET k 0 NX PX ttl` + `INCRBY k 1` per window (the store's choice).
    SetNx,
    /// `INCRBY k 1` + `PEXPIRE k ttl` per window.
    Pexpire,
    /// The `SET NX` shape wrapped in `MULTI`/`EXEC`.
    Transaction,
}

fn pipeline_variant<C: Peer>(conn: &C, shape: CounterShape) -> Variant {
    let conn = conn.clone();
    let (name, commands): (&str, &'static [&'static str]) = match shape {
        CounterShape::SetNx => ("two-window pipeline SET NX PX + INCRBY", &["set", "incrby"]),
        CounterShape::Pexpire => (
            "two-window pipeline INCRBY + PEXPIRE",
            &["incrby", "pexpire"],
        ),
        CounterShape::Transaction => (
            "two-window MULTI/EXEC SET NX PX + INCRBY",
            &["multi", "exec", "set", "incrby"],
        ),
    };
    Variant {
        name: format!("peer: {name}"),
        peer: None,
        commands,
        run: Arc::new(move |round, id| {
            let mut conn = conn.clone();
            Box::pin(async move {
                let mut pipe = redis::pipe();
                if matches!(shape, CounterShape::Transaction) {
                    pipe.atomic();
                }
                for j in 0..2 {
                    // One hash tag per decision, as the peer scripts (a transaction needs it).
                    let key = format!("peer:{{pipe:{shape:?}:{round}:{id}}}:{j}");
                    match shape {
                        CounterShape::Pexpire => {
                            pipe.cmd("INCRBY").arg(&key).arg(1);
                            pipe.cmd("PEXPIRE").arg(&key).arg(62_000).ignore();
                        }
                        _ => {
                            pipe.cmd("SET")
                                .arg(&key)
                                .arg(0)
                                .arg("NX")
                                .arg("PX")
                                .arg(62_000)
                                .ignore();
                            pipe.cmd("INCRBY").arg(&key).arg(1);
                        }
                    }
                }
                let counts: Vec<i64> = pipe.query_async(&mut conn).await.expect("the pipeline");
                assert!(counts.iter().all(|&c| c <= 100), "{counts:?}");
            })
        }),
    }
}

fn incr_variant<C: Peer>(conn: &C) -> Variant {
    let conn = conn.clone();
    Variant {
        name: "peer: one INCR".to_owned(),
        peer: None,
        commands: &["incr"],
        run: Arc::new(move |round, id| {
            let mut conn = conn.clone();
            Box::pin(async move {
                let _: i64 = redis::cmd("INCR")
                    .arg(format!("peer:incr:{round}:{id}"))
                    .query_async(&mut conn)
                    .await
                    .expect("INCR");
            })
        }),
    }
}

/// This process's user + system CPU time so far, in µs.
fn process_cpu_us() -> f64 {
    // SAFETY: `getrusage` only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Redis's own process CPU so far (`used_cpu_user` + `used_cpu_sys` of `INFO cpu`), in µs:
/// everything the server spent, reading, parsing and answering each command included.
async fn redis_cpu_us(node: &mut MultiplexedConnection) -> f64 {
    let info: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(node)
        .await
        .expect("INFO cpu");
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (field("used_cpu_user") + field("used_cpu_sys")) * 1e6
}

/// One measurement on Redis `nodes` (every primary, in Cluster): (Redis µs per decision, Redis
/// commands per decision, app µs per decision, calls per decision, Redis process µs per
/// decision).
async fn measure(
    nodes: &mut [MultiplexedConnection],
    variant: &Variant,
    round: usize,
    uses_per_key: usize,
) -> [f64; 5] {
    for node in nodes.iter_mut() {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(node)
            .await
            .expect("CONFIG RESETSTAT");
    }
    let mut server = 0.0;
    for node in nodes.iter_mut() {
        server -= redis_cpu_us(node).await;
    }
    let cpu = process_cpu_us();
    let tasks: Vec<_> = (0..CALLERS)
        .map(|c| {
            let run = Arc::clone(&variant.run);
            tokio::spawn(async move {
                for i in (c..DECISIONS).step_by(CALLERS) {
                    run(round, i / uses_per_key).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a caller panicked");
    }
    let app = process_cpu_us() - cpu;
    for node in nodes.iter_mut() {
        server += redis_cpu_us(node).await;
    }
    let (mut calls, mut usec, mut commands) = (0, 0, 0);
    for node in nodes.iter_mut() {
        for (name, c, u) in command_stats(node).await {
            if variant.commands.contains(&name.as_str()) {
                calls += c;
                usec += u;
            }
            if !matches!(name.as_str(), "info" | "config" | "cluster") {
                commands += c;
            }
        }
    }
    // One call per decision; in Cluster, one per slot a decision's keys fall on.
    assert!(
        calls as usize >= DECISIONS,
        "{}: {calls} calls",
        variant.name
    );
    let n = DECISIONS as f64;
    [
        usec as f64 / n,
        commands as f64 / n,
        app / n,
        calls as f64 / n,
        server / n,
    ]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The peers (on `conn`) and tollgate's rows (on `store`), each row with the peer it is compared
/// with.
fn variants<C: Peer>(store: &RedisStore, counting: &RedisStore, conn: &C) -> Vec<Variant> {
    let per_minute = |name: &str, limit, algorithm| {
        Rule::builder(name, Quota::per_minute(limit).unwrap())
            .algorithm(algorithm)
            .build()
            .unwrap()
    };
    // The peers' parameters: 600 per minute (100 ms = 100,000 µs apart), burst 600.
    let mut variants = vec![
        script_variant(conn, "GCRA script", PEER_GCRA, 1, &[100_000, 600]),
        script_variant(conn, "TIME+GET+SET PX floor script", PEER_FLOOR, 1, &[]),
        script_variant(
            conn,
            "two-bucket GCRA script",
            PEER_GCRA,
            2,
            &[100_000, 600],
        ),
        script_variant(
            conn,
            "two-window INCRBY+PEXPIRE script",
            PEER_WINDOWS,
            2,
            &[1, 60_000, 600, 100],
        ),
        incr_variant(conn),
        pipeline_variant(conn, CounterShape::SetNx),
        pipeline_variant(conn, CounterShape::Pexpire),
        pipeline_variant(conn, CounterShape::Transaction),
    ];
    let (gcra_peer, two_gcra_peer) = (0, 2);
    let single = [
        ("GCRA", Algorithm::Gcra),
        ("fixed window", Algorithm::FixedWindow),
        ("sliding window", Algorithm::SlidingWindow),
        ("sliding log", Algorithm::SlidingLog),
    ];
    for (name, algorithm) in single {
        let rule = per_minute(&name.replace(' ', "_"), 600, algorithm);
        variants.push(store_variant(store, name, vec![rule], gcra_peer, SCRIPT));
    }
    let vmarea = vec![
        Rule::builder("per_token", Quota::per_minute(600).unwrap())
            .algorithm(Algorithm::FixedWindow)
            .honour_replays(true)
            .build()
            .unwrap(),
        per_minute("per_ip", 100, Algorithm::FixedWindow),
    ];
    variants.push(store_variant(
        store,
        "VMArea (two fixed windows)",
        vmarea.clone(),
        two_gcra_peer,
        SCRIPT,
    ));
    variants.push(store_variant(
        counting,
        "counters: fixed window",
        vec![per_minute("fixed_window", 600, Algorithm::FixedWindow)],
        gcra_peer,
        COUNTERS,
    ));
    variants.push(store_variant(
        counting,
        "counters: VMArea (two fixed windows)",
        vmarea,
        two_gcra_peer,
        COUNTERS,
    ));
    variants
}

/// The commands of a decision by the script.
const SCRIPT: &[&str] = &["fcall", "evalsha"];
/// The commands of a decision by fixed-window counters (admitted: no refund).
const COUNTERS: &[&str] = &["set", "incrby", "get", "decrby", "pexpire", "getdel", "del"];

/// A store as the measurement uses it: a failure fails the measurement, the deny cache is off.
fn store(connection: RedisConnection, fixed_window_counters: bool) -> RedisStore {
    RedisStore::builder(connection)
        .fixed_window_counters(fixed_window_counters)
        .failure_policy(FailurePolicy::FailClosed)
        // A loaded machine must not turn a slow answer into a failed measurement.
        .budget(Duration::from_secs(5))
        .deny_cache(None)
        .build()
}

/// Measures every variant, rounds interleaved, and prints the table.
async fn report(title: &str, variants: &[Variant], nodes: &mut [MultiplexedConnection]) {
    // Warm-up: scripts loaded, connections open (round 255 keys are not measured).
    for v in variants {
        (v.run)(255, 0).await;
    }
    let mut warm = vec![Vec::new(); variants.len()];
    let mut fresh = vec![Vec::new(); variants.len()];
    for round in 0..ROUNDS {
        for (i, v) in variants.iter().enumerate() {
            warm[i].push(measure(nodes, v, 2 * round, USES_PER_KEY).await);
            fresh[i].push(measure(nodes, v, 2 * round + 1, 1).await);
        }
    }
    let f = |m: &[[f64; 5]], k: usize| median(m.iter().map(|m| m[k]).collect());
    let redis_us: Vec<f64> = warm.iter().map(|m| f(m, 0)).collect();
    println!(
        "{title}: {DECISIONS} admitted decisions per measurement, {CALLERS} callers, median of \
         {ROUNDS} interleaved rounds; warm: {USES_PER_KEY} decisions per key, fresh: one"
    );
    let server_us: Vec<f64> = warm.iter().map(|m| f(m, 4)).collect();
    println!(
        "| variant | Redis CPU µs/decision, warm | ratio to peer | Redis CPU µs/decision, fresh \
         | measured calls/decision | Redis commands/decision | Redis process CPU µs/decision, warm \
         | its ratio to peer | app CPU µs/decision |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (i, v) in variants.iter().enumerate() {
        let ratio = match v.peer {
            Some(p) => format!("{:.2} ({})", redis_us[i] / redis_us[p], variants[p].name),
            None => "-".to_owned(),
        };
        let server_ratio = match v.peer {
            Some(p) => format!("{:.2}", server_us[i] / server_us[p]),
            None => "-".to_owned(),
        };
        println!(
            "| {} | {:.2} | {ratio} | {:.2} | {:.1} | {:.1} | {:.2} | {server_ratio} | {:.1} |",
            v.name,
            redis_us[i],
            f(&fresh[i], 0),
            f(&warm[i], 3),
            f(&warm[i], 1),
            server_us[i],
            f(&warm[i], 2),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand in release mode"]
async fn cost_per_decision() {
    let redis = TestRedis::start().await;
    let store_ = store(patient(redis.url()).await, false);
    store_.load_script().await.unwrap();
    let counting = store(patient(redis.url()).await, true);
    let conn = redis.admin().await;
    let variants = variants(&store_, &counting, &conn);
    report("one Redis", &variants, &mut [redis.admin().await]).await;
}

/// The same on the 3-master Cluster: Redis CPU summed over the masters. tollgate's VMArea
/// request has its two keys on two slots (two calls, in parallel); the peers put a decision's
/// keys on one slot (a hash tag).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand in release mode"]
async fn cost_per_decision_on_a_cluster() {
    let cluster = TestCluster::start().await;
    let store_ = store(patient_cluster(cluster.urls()).await, false);
    store_.load_script().await.unwrap();
    let counting = store(patient_cluster(cluster.urls()).await, true);
    let conn = redis::cluster::ClusterClient::new(cluster.urls())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap();
    let variants = variants(&store_, &counting, &conn);
    let mut nodes = Vec::new();
    for i in 0..cluster.urls().len() {
        nodes.push(cluster.node(i).await);
    }
    report("3-master Cluster", &variants, &mut nodes).await;
}

/// Decisions per second grow with masters for keys spread over slots: the same decisions
/// (random keys, so spread evenly over the slots) on 1-, 2- and 3-master Clusters, each
/// master's own CPU measured. On a machine with fewer cores than masters the wall-clock
/// throughput cannot grow, so what is reported is what does: the CPU each master spends, and
/// the capacity that implies when each master has a core of its own (the busiest master
/// saturates first: decisions per second = decisions / its CPU time).
///
/// ```text
/// cargo test --release -p tollgate-redis --test redis cluster_capacity_grows_with_masters \
///     -- --ignored --nocapture --test-threads 1
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand in release mode"]
async fn cluster_capacity_grows_with_masters() {
    println!(
        "Cluster capacity: {DECISIONS} admitted decisions per measurement, {CALLERS} callers, \
         median of {ROUNDS} rounds; per-master Redis process CPU (INFO cpu) and FCALL/counter \
         commandstats µs"
    );
    println!(
        "| masters | variant | per-master process CPU µs/decision | busiest master µs/decision | \
         capacity, decisions/s at one core per master | per-master commandstats µs/decision \
         | per-master calls/decision |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for masters in 1..=3 {
        let cluster = TestCluster::with_masters(masters).await;
        let store_ = store(patient_cluster(cluster.urls()).await, false);
        store_.load_script().await.unwrap();
        let counting = store(patient_cluster(cluster.urls()).await, true);
        let gcra = Rule::builder("gcra", Quota::per_minute(600).unwrap())
            .build()
            .unwrap();
        let window = |name: &str, limit| {
            Rule::builder(name, Quota::per_minute(limit).unwrap())
                .algorithm(Algorithm::FixedWindow)
                .build()
                .unwrap()
        };
        let variants = [
            store_variant(&store_, "GCRA (script)", vec![gcra], 0, SCRIPT),
            store_variant(
                &counting,
                "counters: VMArea (two fixed windows)",
                vec![window("per_token", 600), window("per_ip", 100)],
                0,
                COUNTERS,
            ),
        ];
        let mut nodes = Vec::new();
        for i in 0..masters {
            nodes.push(cluster.node(i).await);
        }
        for v in &variants {
            (v.run)(255, 0).await;
        }
        for v in &variants {
            // Per round: each master's (process µs, commandstats µs) per decision.
            let mut rounds: Vec<Vec<(f64, f64, f64)>> = Vec::new();
            for round in 0..ROUNDS {
                let mut before = Vec::new();
                for node in nodes.iter_mut() {
                    let _: () = redis::cmd("CONFIG")
                        .arg("RESETSTAT")
                        .query_async(node)
                        .await
                        .unwrap();
                    before.push(redis_cpu_us(node).await);
                }
                let tasks: Vec<_> = (0..CALLERS)
                    .map(|c| {
                        let run = Arc::clone(&v.run);
                        tokio::spawn(async move {
                            for i in (c..DECISIONS).step_by(CALLERS) {
                                run(round, i / USES_PER_KEY).await;
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                let mut per_master = Vec::new();
                for (node, before) in nodes.iter_mut().zip(&before) {
                    let cpu = redis_cpu_us(node).await - before;
                    let stats = command_stats(node).await;
                    let ours = stats
                        .iter()
                        .filter(|(name, _, _)| v.commands.contains(&name.as_str()));
                    let usec: u64 = ours.clone().map(|(_, _, u)| u).sum();
                    let calls: u64 = ours.map(|(_, c, _)| c).sum();
                    let n = DECISIONS as f64;
                    per_master.push((cpu / n, usec as f64 / n, calls as f64 / n));
                }
                rounds.push(per_master);
            }
            // The round whose busiest master is the median one.
            rounds.sort_by(|a, b| {
                let busiest = |r: &Vec<(f64, f64, f64)>| r.iter().map(|m| m.0).fold(0.0, f64::max);
                busiest(a).total_cmp(&busiest(b))
            });
            let round = &rounds[rounds.len() / 2];
            let busiest = round.iter().map(|m| m.0).fold(0.0, f64::max);
            let list = |k: fn(&(f64, f64, f64)) -> f64| {
                round
                    .iter()
                    .map(|m| format!("{:.2}", k(m)))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            println!(
                "| {masters} | {} | {} | {busiest:.2} | {:.0} | {} | {} |",
                v.name,
                list(|m| m.0),
                1e6 / busiest,
                list(|m| m.1),
                list(|m| m.2),
            );
        }
    }
}
