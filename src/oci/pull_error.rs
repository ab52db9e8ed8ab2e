//! Why a pull failed: one error type for the import pipeline and the fetch machinery under
//! it (kept apart from both so that neither imports the other for it).

use super::error::SourceError;
use super::LayerError;
use crate::repo::RepoError;
use crate::tree::layers::ApplyError;

/// Why a pull failed, naming the layer or blob involved.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Ref(#[from] super::reference::RefParseError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("layer {layer}: {source}")]
    Layer {
        layer: String,
        source: Box<LayerError>,
    },
    #[error("layer {layer}: {source}")]
    Apply { layer: String, source: ApplyError },
    #[error("layer {layer}: stored splitstream unreadable: {source}")]
    Splitstream {
        layer: String,
        source: Box<LayerError>,
    },
    #[error(transparent)]
    Partial(#[from] super::partial::PartialError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("cannot write image: {0}")]
    Write(#[from] erofs::WriteError),
}
