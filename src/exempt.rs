//! Exemptions: requests that pass every limit uncounted, by client address, by identity, or
//! by a predicate in code.
//!
//! An exempt request is not charged and not counted by any limit: it goes straight to the inner
//! service, and its response carries no rate-limit headers (it has no limit to report), exactly
//! like a request no limit applies to. [`Metrics::exempt`](crate::Metrics::exempt) counts them.

use std::fmt;
use std::sync::Arc;

use tollgate_core::{Key, KeySecret};

use crate::client_ip::Cidr;
use crate::head::RequestHead;
use crate::key::{push_values, KeyPart};

/// A predicate in code: `true` exempts the request.
pub(crate) type Predicate = Arc<dyn Fn(&RequestHead<'_>) -> bool + Send + Sync>;

/// The exemptions a builder collected. Identity values are digested when the layer is built
/// (the key secret is only then known) and not kept afterwards.
#[derive(Clone, Default)]
pub(crate) struct Exemptions {
    pub(crate) ranges: Vec<Cidr>,
    pub(crate) identities: Vec<(KeyPart, Vec<Box<[u8]>>)>,
    pub(crate) predicates: Vec<Predicate>,
}

impl Exemptions {
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.identities.is_empty() && self.predicates.is_empty()
    }
}

/// Never shows identity values: only how many there are.
impl fmt::Debug for Exemptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exemptions")
            .field("ranges", &self.ranges)
            .field(
                "identities",
                &self
                    .identities
                    .iter()
                    .map(|(part, values)| (part, values.len()))
                    .collect::<Vec<_>>(),
            )
            .field("predicates", &self.predicates.len())
            .finish()
    }
}

/// The digest a key part has for a request carrying `value` alone: how the limiter's own
/// reading of the part hashes a single value, so that an exempt identity matches exactly the
/// requests that carry it. `None` for an empty value, which no request has as its part.
pub(crate) fn value_digest(secret: &KeySecret, tag: &[u8], value: &[u8]) -> Option<Key> {
    let mut key = secret.key().part(tag);
    push_values(&mut key, [value]).then(|| key.finish())
}
