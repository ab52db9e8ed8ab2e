//! Raw fs-verity ioctls (`include/uapi/linux/fsverity.h`).
//!
//! This is the only module of `fsverity` allowed to use `unsafe`. It exposes
//! two safe functions returning raw [`Errno`]s; the error interpretation
//! lives in `kernel.rs`.

use std::mem::size_of;

use rustix::fd::AsFd;
use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};

use crate::fsverity::MAX_DIGEST_SIZE;

/// `struct fsverity_enable_arg`.
#[repr(C)]
#[derive(Debug)]
struct EnableArg {
    version: u32,
    hash_algorithm: u32,
    block_size: u32,
    salt_size: u32,
    salt_ptr: u64,
    sig_size: u32,
    reserved1: u32,
    sig_ptr: u64,
    reserved2: [u64; 11],
}

/// Header of `struct fsverity_digest` (its `digest[]` is a flexible array;
/// the ioctl number encodes only this 4-byte header).
#[repr(C)]
#[derive(Debug)]
struct DigestHeader {
    digest_algorithm: u16,
    /// In: capacity of `digest`; out: digest length.
    digest_size: u16,
}

/// `struct fsverity_digest` with room for the largest digest.
#[repr(C)]
#[derive(Debug)]
struct MeasureBuf {
    header: DigestHeader,
    digest: [u8; MAX_DIGEST_SIZE],
}

const _: () = assert!(size_of::<EnableArg>() == 128);
const _: () = assert!(size_of::<DigestHeader>() == 4);

/// `_IOW('f', 133, struct fsverity_enable_arg)`.
pub(super) const FS_IOC_ENABLE_VERITY: Opcode = opcode::write::<EnableArg>(b'f', 133);
/// `_IOWR('f', 134, struct fsverity_digest)`.
pub(super) const FS_IOC_MEASURE_VERITY: Opcode = opcode::read_write::<DigestHeader>(b'f', 134);

/// `FS_IOC_ENABLE_VERITY` with the given algorithm id and block size, no salt
/// and no signature.
pub(super) fn enable_verity<Fd: AsFd>(
    fd: Fd,
    hash_algorithm: u32,
    block_size: u32,
) -> Result<(), Errno> {
    let arg = EnableArg {
        version: 1,
        hash_algorithm,
        block_size,
        salt_size: 0,
        salt_ptr: 0,
        sig_size: 0,
        reserved1: 0,
        sig_ptr: 0,
        reserved2: [0; 11],
    };
    // SAFETY: FS_IOC_ENABLE_VERITY is an _IOW ioctl whose argument is a
    // pointer to `struct fsverity_enable_arg`; `EnableArg` is a `repr(C)`
    // mirror of it (128 bytes, asserted above). Setter passes a pointer to
    // its owned copy, which lives for the whole call. The kernel only reads
    // it; salt_ptr/sig_ptr are null with zero sizes, so it dereferences no
    // other user memory.
    unsafe { ioctl(fd, Setter::<FS_IOC_ENABLE_VERITY, EnableArg>::new(arg)) }
}

/// `FS_IOC_MEASURE_VERITY`: returns the kernel algorithm id and the digest
/// bytes.
pub(super) fn measure_verity<Fd: AsFd>(fd: Fd) -> Result<(u16, Vec<u8>), Errno> {
    let mut buf = MeasureBuf {
        header: DigestHeader {
            digest_algorithm: 0,
            digest_size: MAX_DIGEST_SIZE as u16,
        },
        digest: [0; MAX_DIGEST_SIZE],
    };
    // SAFETY: FS_IOC_MEASURE_VERITY is an _IOWR ioctl taking a pointer to
    // `struct fsverity_digest`, whose layout `MeasureBuf` mirrors (two u16
    // then the digest bytes). The kernel reads the header, fails with
    // EOVERFLOW if `digest_size` (= 64, the capacity of `digest`) is too
    // small, and otherwise writes the header and at most `digest_size` bytes
    // of digest, all within `buf`, which is exclusively borrowed for the call.
    unsafe {
        ioctl(
            fd,
            Updater::<FS_IOC_MEASURE_VERITY, MeasureBuf>::new(&mut buf),
        )?
    };
    let n = usize::from(buf.header.digest_size).min(MAX_DIGEST_SIZE);
    Ok((buf.header.digest_algorithm, buf.digest[..n].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "arm",
        target_arch = "aarch64",
        target_arch = "riscv64"
    ))]
    fn opcodes_match_linux_headers() {
        // Values of FS_IOC_ENABLE_VERITY / FS_IOC_MEASURE_VERITY on
        // x86/arm/riscv-style ioctl encodings (dir<<30 | size<<16 | 'f'<<8 | nr).
        assert_eq!(FS_IOC_ENABLE_VERITY as u64, 0x4080_6685);
        assert_eq!(FS_IOC_MEASURE_VERITY as u64, 0xc004_6686);
    }
}
