//! The memory store's integration tests, in one binary so that a change to the core (a
//! cargo-mutants mutant, say) rebuilds one test crate, not four.

mod concurrency;
mod conformance;
mod governor_differential;
mod reclamation;
