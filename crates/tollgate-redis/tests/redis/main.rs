//! The Redis store against a real Redis (and a real 3-master Redis Cluster); see `support` for
//! where Redis comes from. Run: `cargo test -p tollgate-redis --test redis`.

mod support;

mod bench;
mod conformance;
mod corruption;
mod differential;
mod faults;
mod keyspace;
mod realtime;
mod shared;
