//! fs-verity: userspace digests (SHA-256/SHA-512, 4 KiB blocks) and kernel ioctls.
