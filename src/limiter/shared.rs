//! Client quotas an operator changes at runtime ([`ClientQuotas`], e.g. in Redis for a fleet):
//! read again every refresh interval by a background task, and looked up per request in the
//! table the last read made. A change reaches every instance within one interval (plus the
//! time of a read); a read that fails keeps the table as it was.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tollgate_core::{ClientQuota, ClientQuotas, LogThrottle, Rule};

use super::compile::CompiledLimit;
use crate::error::BuildError;
use crate::response::policy_item;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A [`ClientQuotas`] source with its type erased, as the builder keeps it.
pub(crate) type LoadQuotas = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Vec<ClientQuota>, BoxError>> + Send>>
        + Send
        + Sync,
>;

/// Erases a source's type.
pub(crate) fn erase<Q: ClientQuotas>(source: Q) -> LoadQuotas {
    let source = Arc::new(source);
    Arc::new(move || {
        let source = Arc::clone(&source);
        Box::pin(async move { source.load().await.map_err(|e| Box::new(e) as BoxError) })
    })
}

/// (limit index, digest of the limit's one key part) → the rule at the client's quota and its
/// policy item.
type Table = HashMap<(usize, u128), (Rule, Arc<str>)>;

/// The table in force, replaced whole by each read.
pub(crate) struct SharedQuotas {
    table: ArcSwap<Table>,
}

impl SharedQuotas {
    /// Starts reading `load` every `refresh` on the running Tokio runtime; the task ends when
    /// the limiter (the last holder of the table) is dropped, after a reload for instance.
    pub(crate) fn start(
        load: LoadQuotas,
        refresh: Duration,
        limits: &[CompiledLimit],
    ) -> Result<Arc<Self>, BuildError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            BuildError::ClientQuotas(
                "client quotas are read by a background task: build the layer inside a Tokio \
                 runtime"
                    .to_owned(),
            )
        })?;
        if refresh.is_zero() {
            return Err(BuildError::ClientQuotas(
                "the refresh interval must be longer than zero".to_owned(),
            ));
        }
        // Only limits keyed by one part: its value names the client.
        let rules: Vec<(usize, Rule)> = limits
            .iter()
            .enumerate()
            .filter(|(_, limit)| limit.parts.len() == 1)
            .map(|(i, limit)| (i, limit.rule.clone()))
            .collect();
        let shared = Arc::new(Self {
            table: ArcSwap::from_pointee(Table::new()),
        });
        runtime.spawn(refresh_forever(
            Arc::downgrade(&shared),
            load,
            refresh,
            rules,
        ));
        Ok(shared)
    }

    /// The client's rule and policy in limit `index`, if it has a quota of its own.
    pub(crate) fn get(&self, index: usize, client: u128) -> Option<(Rule, Arc<str>)> {
        self.table.load().get(&(index, client)).cloned()
    }
}

async fn refresh_forever(
    shared: Weak<SharedQuotas>,
    load: LoadQuotas,
    refresh: Duration,
    rules: Vec<(usize, Rule)>,
) {
    let log = LogThrottle::new(Duration::from_secs(60));
    loop {
        let loaded = load().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        match loaded {
            Ok(quotas) => {
                let (table, skipped) = table(&rules, quotas);
                shared.table.store(Arc::new(table));
                if skipped > 0 {
                    if let Some(suppressed) = log.permit() {
                        tracing::warn!(
                            skipped,
                            suppressed,
                            "tollgate: client quotas for no limit keyed by one part, or that the \
                             limit's cost cannot fit, were left out"
                        );
                    }
                }
            }
            Err(error) => {
                if let Some(suppressed) = log.permit() {
                    tracing::warn!(%error, suppressed, "tollgate: client quotas could not be read; the last ones read stay in force");
                }
            }
        }
        drop(shared);
        tokio::time::sleep(refresh).await;
    }
}

/// The table for `quotas`, and how many of them apply to no limit.
fn table(rules: &[(usize, Rule)], quotas: Vec<ClientQuota>) -> (Table, usize) {
    let mut table = Table::with_capacity(quotas.len());
    let mut skipped = 0;
    for quota in quotas {
        let found = rules.iter().find(|(_, rule)| rule.name() == quota.rule);
        match found.map(|(i, rule)| (*i, rule.with_quota(quota.quota))) {
            Some((i, Ok(rule))) => {
                let policy: Arc<str> = policy_item(&rule).into();
                table.insert((i, quota.client.as_u128()), (rule, policy));
            }
            _ => skipped += 1,
        }
    }
    (table, skipped)
}
