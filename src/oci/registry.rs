//! Registries (`docker://…`) as an image source, through [`crate::registry`].
//!
//! A tag costs one manifest request (its bytes and digest); a digest costs none when the
//! caller already holds the manifest (see [`super::manifest::resolve_manifest`]). Blobs
//! stream from the registry and are resumed by the client when a connection breaks;
//! verification (digest, size, diff_id) wraps them like any other source's readers.

use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::error::SourceError;
use super::manifest::MAX_JSON_SIZE;
use super::source::{ImageSource, Top};
use crate::registry::{Client, ImageClient, Reference};

/// One image on a registry.
pub struct RegistrySource {
    image: ImageClient,
}

impl RegistrySource {
    /// The image `reference` names, through `client` (registries.conf applies: blocked
    /// registries are refused here, mirrors come first).
    pub fn new(client: &Client, reference: &Reference) -> Result<Self, SourceError> {
        Ok(RegistrySource {
            image: client.image(reference)?,
        })
    }

    pub fn image(&self) -> &ImageClient {
        &self.image
    }
}

impl ImageSource for RegistrySource {
    fn top(&self) -> Result<Top, SourceError> {
        let r = self.image.reference();
        if let Some(d) = &r.digest {
            return Ok(Top::Known {
                digest: d.clone(),
                size: None,
                media_type: None,
            });
        }
        let m = self
            .image
            .get_manifest(r.manifest_reference(), MAX_JSON_SIZE)?;
        // The registry's digest when it gave a sha256 one (then the bytes must match it),
        // else the digest of the bytes themselves.
        let digest = match m.digest {
            Some(d) if d.starts_with("sha256:") => d,
            _ => format!("sha256:{}", hex::encode(Sha256::digest(&m.raw))),
        };
        Ok(Top::Fetched {
            digest,
            raw: m.raw,
            media_type: m.media_type,
        })
    }

    fn fetch_manifest(&self, digest: &str, _size: Option<u64>) -> Result<Vec<u8>, SourceError> {
        Ok(self.image.get_manifest(digest, MAX_JSON_SIZE)?.raw)
    }

    fn open_raw_blob(&self, digest: &str, size: u64) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(Box::new(self.image.open_blob(digest, size)?))
    }

    fn open_raw_blob_at(
        &self,
        digest: &str,
        size: u64,
        offset: u64,
    ) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(Box::new(self.image.open_blob_at(digest, size, offset)?))
    }

    fn cheap_to_reread(&self) -> bool {
        false
    }

    fn registry_image(&self) -> Option<&ImageClient> {
        Some(&self.image)
    }
}
