//! The shared conformance table against the memory store, and proof that the table catches a
//! store that gets things wrong.

use tollgate_core::conformance::{self, BASE};
use tollgate_core::{Check, ManualClock, MemoryStore, Outcome, Replay, Store};

#[tokio::test]
async fn memory_store_passes_the_conformance_table() {
    let clock = ManualClock::new(BASE);
    let store = MemoryStore::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .build();
    if let Err(failures) = conformance::run(&store, &clock, 1).await {
        panic!("conformance failures:\n{failures}");
    }
}

/// A broken store: it checks each rule on its own, so a rule is charged even when another denies.
struct ChargesOnDenial(MemoryStore<ManualClock>);

impl Store for ChargesOnDenial {
    type Error = std::convert::Infallible;

    async fn check(
        &self,
        checks: &[Check<'_>],
        replay: Option<&Replay>,
    ) -> Result<Outcome, Self::Error> {
        let mut outcome = self.0.check_now(&checks[..1], replay);
        for check in &checks[1..] {
            let single = self.0.check_now(std::slice::from_ref(check), None);
            outcome.decisions.extend(single.decisions);
        }
        Ok(Outcome::new(checks, outcome.decisions, outcome.replayed))
    }

    async fn peek(&self, checks: &[Check<'_>]) -> Result<Outcome, Self::Error> {
        self.0.peek(checks).await
    }
}

#[tokio::test]
async fn the_table_catches_a_store_that_charges_on_partial_denial() {
    let clock = ManualClock::new(BASE);
    let store = ChargesOnDenial(
        MemoryStore::builder()
            .clock(clock.clone())
            .sweep_interval(None)
            .build(),
    );
    let failures = conformance::run(&store, &clock, 2)
        .await
        .expect_err("a store that charges denied requests must fail the table");
    assert!(failures.contains("stacked rules"), "{failures}");
}
