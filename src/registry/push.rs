//! Pushing: blob uploads (monolithic or chunked), cross-repository mounts, manifests.
//!
//! Per the distribution spec: a blob the registry already has (HEAD 200) is not sent
//! again; with a `from` repository on the same registry, `POST …/blobs/uploads/?mount=D&from=R`
//! links it without data (201) or opens an ordinary upload (202). Small blobs go up in one
//! `PUT …?digest=D`; larger ones as `PATCH` pieces of [`CHUNK`] bytes with `Content-Range`,
//! then an empty `PUT …?digest=D`. Memory stays at one piece. The registry checks the
//! digest when the upload completes; a manifest is pushed only after all its blobs.

use std::io::Read;

use ureq::http::{header, Method, StatusCode};

use super::client::ImageClient;
use super::error::RegistryError;
use super::http::{error_message, header_str, pct, Req, ReqBody};

/// Upload piece size; blobs up to this size go up in one request.
pub const CHUNK: usize = 16 << 20;

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PushOutcome {
    /// Already there (HEAD).
    Existed,
    /// Linked from another repository of the registry.
    Mounted,
    Uploaded,
}

impl ImageClient {
    fn upload_req<'a>(
        &'a self,
        method: Method,
        path: String,
        headers: Vec<(header::HeaderName, String)>,
        body: ReqBody<'a>,
        scopes: Vec<String>,
        what: &'a str,
    ) -> Req<'a> {
        let ep = self.endpoint();
        Req {
            method,
            host: &ep.host,
            path,
            headers,
            body,
            scopes,
            repository: &ep.repository,
            what,
        }
    }

    /// The path (and query) of an upload `Location`, which must be on the registry itself.
    fn upload_path(&self, loc: &str, what: &str) -> Result<String, RegistryError> {
        let ep = self.endpoint();
        if loc.starts_with('/') {
            return Ok(loc.to_string());
        }
        if let Some((_, rest)) = loc.split_once("://") {
            let (auth, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if auth.eq_ignore_ascii_case(&ep.host) {
                return Ok(path.to_string());
            }
        }
        Err(RegistryError::Protocol {
            registry: ep.host.clone(),
            what: what.to_string(),
            why: "upload location is not on the registry".into(),
        })
    }

    fn status_error(&self, what: &str, resp: ureq::http::Response<ureq::Body>) -> RegistryError {
        RegistryError::Status {
            registry: self.endpoint().host.clone(),
            what: what.to_string(),
            status: resp.status().as_u16(),
            message: error_message(resp),
        }
    }

    /// Upload the blob `digest` of `size` bytes read from `data`, unless the registry has
    /// it; `mount_from` names another repository on the same registry that may have it.
    pub fn push_blob(
        &self,
        digest: &str,
        size: u64,
        data: &mut dyn Read,
        mount_from: Option<&str>,
    ) -> Result<PushOutcome, RegistryError> {
        if self.blob_exists(digest)?.is_some() {
            return Ok(PushOutcome::Existed);
        }
        let repo = self.endpoint().repository.clone();
        let what = format!("upload of blob {digest}");
        let mut scopes = vec![format!("repository:{repo}:pull,push")];
        let mut path = format!("/v2/{repo}/blobs/uploads/");
        if let Some(from) = mount_from.filter(|f| *f != repo) {
            scopes.push(format!("repository:{from}:pull"));
            path.push_str(&format!("?mount={}&from={}", pct(digest), pct(from)));
        }
        let resp = self.transport().send(&self.upload_req(
            Method::POST,
            path,
            vec![],
            ReqBody::None,
            scopes.clone(),
            &what,
        ))?;
        if resp.status() == StatusCode::CREATED && mount_from.is_some() {
            return Ok(PushOutcome::Mounted);
        }
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(&what, resp));
        }
        let mut loc = self.upload_path(
            header_str(&resp, header::LOCATION).ok_or_else(|| RegistryError::Protocol {
                registry: self.endpoint().host.clone(),
                what: what.clone(),
                why: "upload started without a Location".into(),
            })?,
            &what,
        )?;
        drop(resp);

        let mut buf = vec![0u8; (size as usize).min(CHUNK)];
        let mut sent = 0u64;
        let mut piece_len = fill(data, &mut buf).map_err(|source| RegistryError::Io {
            registry: self.endpoint().host.clone(),
            what: what.clone(),
            source,
        })?;
        // Pieces while more follows; the last piece goes with the closing PUT.
        loop {
            let last = sent + piece_len as u64 >= size || piece_len < buf.len();
            if last {
                let sep = if loc.contains('?') { '&' } else { '?' };
                let put = format!("{loc}{sep}digest={}", pct(digest));
                let headers = vec![(header::CONTENT_TYPE, "application/octet-stream".to_string())];
                let resp = self.transport().send(&self.upload_req(
                    Method::PUT,
                    put,
                    headers,
                    ReqBody::Bytes(&buf[..piece_len]),
                    scopes.clone(),
                    &what,
                ))?;
                sent += piece_len as u64;
                if resp.status() != StatusCode::CREATED {
                    return Err(self.status_error(&what, resp));
                }
                if sent != size {
                    return Err(RegistryError::Protocol {
                        registry: self.endpoint().host.clone(),
                        what,
                        why: format!("source gave {sent} bytes, expected {size}"),
                    });
                }
                return Ok(PushOutcome::Uploaded);
            }
            let headers = vec![
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (
                    header::CONTENT_RANGE,
                    format!("{}-{}", sent, sent + piece_len as u64 - 1),
                ),
            ];
            let resp = self.transport().send(&self.upload_req(
                Method::PATCH,
                loc.clone(),
                headers,
                ReqBody::Bytes(&buf[..piece_len]),
                scopes.clone(),
                &what,
            ))?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(self.status_error(&what, resp));
            }
            if let Some(l) = header_str(&resp, header::LOCATION) {
                loc = self.upload_path(l, &what)?;
            }
            sent += piece_len as u64;
            piece_len = fill(data, &mut buf).map_err(|source| RegistryError::Io {
                registry: self.endpoint().host.clone(),
                what: what.clone(),
                source,
            })?;
        }
    }

    /// PUT a manifest under `reference` (a tag or its digest); returns the registry's digest.
    pub fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        raw: &[u8],
    ) -> Result<Option<String>, RegistryError> {
        let repo = self.endpoint().repository.clone();
        let what = format!("manifest {repo}:{reference}");
        let resp = self.transport().send(&self.upload_req(
            Method::PUT,
            format!("/v2/{repo}/manifests/{reference}"),
            vec![(header::CONTENT_TYPE, media_type.to_string())],
            ReqBody::Bytes(raw),
            vec![format!("repository:{repo}:pull,push")],
            &what,
        ))?;
        if resp.status() != StatusCode::CREATED && !resp.status().is_success() {
            return Err(self.status_error(&what, resp));
        }
        Ok(header_str(&resp, "docker-content-digest".parse().expect("valid")).map(str::to_string))
    }
}

/// Read until `buf` is full or the source ends; returns the bytes read.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
