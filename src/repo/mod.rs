//! The repository: object store (and, later, images, refs, gc, fsck).

pub mod objects;
