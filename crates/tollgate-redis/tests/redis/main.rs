//! The Redis store against a real Redis (and a real 3-master Redis Cluster); see `support` for
//! where Redis comes from. Run: `cargo test -p tollgate-redis --test redis`.
//!
//! Most modules run the script in explicit-time mode (the test sets "now"); `realtime`,
//! `keyspace`, `http_keyspace`, `shared` and `faults` run it on Redis's own clock, as in
//! production. `scripts/lua-mutants.py` checks that the first three kill every mutation of
//! the script on its list.

mod support;

mod bench;
mod conformance;
mod corruption;
mod cost;
mod counters;
mod differential;
mod faults;
mod http_keyspace;
mod keyspace;
mod limits_as_data;
mod observability;
mod realtime;
mod shared;
