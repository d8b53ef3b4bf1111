//! The store's error type: what went wrong, as a kind callers can act on (the api-service maps
//! `NotFound` to gRPC NOT_FOUND, `rkt image rm` of an unknown id is not a crash), plus the full
//! message chain for the one line rkt prints. Modelled on `std::io::Error`: a kind and an
//! inner error. Inside the crate, code keeps using `anyhow` with context; a kind is attached
//! where it is known ([`Error::new`], [`Error::wrap`]) and survives any context added later,
//! because the public entry points recover it from the chain ([`From<anyhow::Error>`]).

use std::fmt;

/// What kind of failure, for callers that decide on it. Everything not classified is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The name or id matches no image in the store.
    NotFound,
    /// An id prefix matches several images.
    Ambiguous,
    /// The image reference or id is malformed.
    InvalidReference,
    /// The image's content is refused: a digest or size mismatch, an unsafe archive entry.
    Refused,
    /// The image is not signed by a key trusted for its name (`rkt trust`).
    Untrusted,
    Other,
}

/// A store error: a kind and the whole chain of messages.
pub struct Error {
    kind: ErrorKind,
    inner: anyhow::Error,
}

impl Error {
    /// A new error of `kind` with `msg`.
    pub fn new(kind: ErrorKind, msg: impl fmt::Display) -> Error {
        Error {
            kind,
            inner: anyhow::anyhow!("{msg}"),
        }
    }

    /// Classifies an existing error (keeps its message chain).
    pub fn wrap(kind: ErrorKind, inner: anyhow::Error) -> Error {
        Error { kind, inner }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    // The whole chain on one line, as anyhow's `{:#}` prints it: callers print this error as
    // they printed the anyhow error before it had a kind.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.inner)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {:#}", self.kind, self.inner)
    }
}

// No `source()`: Display already carries the chain, and a source would print it twice.
impl std::error::Error for Error {}

impl From<anyhow::Error> for Error {
    /// The kind of the innermost classified error in the chain (an error classified deep inside
    /// and given context on its way out keeps its kind), else `Other`.
    fn from(e: anyhow::Error) -> Error {
        let kind = e
            .chain()
            .filter_map(|c| c.downcast_ref::<Error>())
            .map(|c| c.kind)
            .last()
            .unwrap_or(ErrorKind::Other);
        Error { kind, inner: e }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::from(anyhow::Error::from(e))
    }
}

/// Results of the store's public API.
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn deep() -> anyhow::Result<()> {
        Err(Error::new(ErrorKind::NotFound, "image \"x\" not found in the store").into())
    }

    #[test]
    fn kind_survives_context_and_message_is_one_line() {
        let e: Error = deep().context("rendering x").unwrap_err().into();
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            "rendering x: image \"x\" not found in the store"
        );
        // Through anyhow again (how the CLI sees it): still one line, printed once.
        let a = anyhow::Error::from(e).context("fetching");
        assert_eq!(
            format!("{a:#}"),
            "fetching: rendering x: image \"x\" not found in the store"
        );
        let plain: Error = anyhow::anyhow!("disk full").into();
        assert_eq!(plain.kind(), ErrorKind::Other);
    }
}
