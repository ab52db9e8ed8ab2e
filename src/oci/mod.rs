//! OCI images: sources (image layouts, archives, registries), manifests and configs,
//! layer decoding (tar + gzip/zstd), splitstreams, and the import pipeline.

pub mod splitstream;
pub mod tar;
pub mod tarsplit;

pub use splitstream::{cat, import_layer, object_refs, read_entries, ImportStats, ImportedLayer};
pub use tar::LayerError;
pub mod containers_storage;
pub mod error;
pub(crate) mod fetch;
mod fetch_progress;
pub mod import;
pub mod layout;
pub mod layout_writer;
pub mod manifest;
pub mod media;
pub mod partial;
pub mod pull_error;
pub mod push;
pub mod reference;
pub mod registry;
pub mod source;
pub mod toc;
mod verify;

pub use crate::tree::entry::{EntryData, EntryKind, LayerEntry};
pub use error::SourceError;
pub use layout::{NamedLayout, OciSource};
pub use layout_writer::write_layout;
pub use manifest::{Compression, LayerDesc, PlatformSpec, ResolvedImage};
pub use reference::{ImageRef, Reference};
pub use source::ImageSource;
