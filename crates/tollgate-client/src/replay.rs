//! Replayable request bodies: what may be sent again when a request is retried.

use bytes::Bytes;
use http_body_util::combinators::{BoxBody, UnsyncBoxBody};
use http_body_util::{Empty, Full};

/// A request body that can (or cannot) be sent a second time.
///
/// A retry sends the same request again, body included. Bodies held in memory (bytes, strings,
/// [`Full`], [`Empty`]) replay cheaply; a streamed body has been consumed by the first attempt
/// and cannot, so its [`replay`](Self::replay) is `None` and the first response is returned
/// whatever it is. Implement it for a body type of your own the same way.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use tollgate_client::ReplayBody;
///
/// let body = Full::new(Bytes::from_static(b"{}"));
/// assert!(body.replay().is_some());
/// ```
pub trait ReplayBody: Sized {
    /// A copy of this body to send again, or `None` when it cannot be replayed.
    fn replay(&self) -> Option<Self>;
}

/// In-memory bodies: a clone is a replay (for [`Bytes`], a reference count).
macro_rules! replay_by_clone {
    ($($ty:ty),* $(,)?) => {$(
        impl ReplayBody for $ty {
            fn replay(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

replay_by_clone!(Bytes, String, Vec<u8>, &'static str, &'static [u8], ());

impl<D: Clone> ReplayBody for Full<D> {
    fn replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for Empty<D> {
    fn replay(&self) -> Option<Self> {
        Some(Empty::new())
    }
}

/// A boxed body may be a stream: never replayed.
impl<D, E> ReplayBody for BoxBody<D, E> {
    fn replay(&self) -> Option<Self> {
        None
    }
}

/// A boxed body may be a stream: never replayed.
impl<D, E> ReplayBody for UnsyncBoxBody<D, E> {
    fn replay(&self) -> Option<Self> {
        None
    }
}
