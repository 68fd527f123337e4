//! Errors of [`ConnectionManager::get_or_create`](crate::ConnectionManager::get_or_create).

use std::sync::Arc;

/// Why [`get_or_create`](crate::ConnectionManager::get_or_create) returned no connection.
///
/// Every caller waiting on the same creation receives the same error, so the error of the
/// `make` that ran is shared behind an [`Arc`] and this type is [`Clone`] whatever `E` is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GetError<E> {
    /// The `make` that ran failed. Nothing was cached: the next call runs its own `make`.
    #[error("creating the connection failed")]
    Create(#[source] Arc<E>),
    /// The entry was removed (by `remove` or `close_all`) while its connection was being
    /// created. The new connection has been closed and was never cached.
    #[error("the connection was removed while it was being created")]
    Removed,
}

impl<E> Clone for GetError<E> {
    fn clone(&self) -> Self {
        match self {
            GetError::Create(error) => GetError::Create(Arc::clone(error)),
            GetError::Removed => GetError::Removed,
        }
    }
}
