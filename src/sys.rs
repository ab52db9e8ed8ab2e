//! The kernel calls rustix has no safe wrapper for: fs-verity ioctls
//! (`include/uapi/linux/fsverity.h`), loop-device setup
//! (`include/uapi/linux/loop.h`) and `mount_setattr(2)` for idmapped mounts.
//!
//! This is the only module of the crate allowed to use `unsafe`. Each
//! function is safe to call and returns raw [`Errno`]s; the callers
//! (`fsverity::kernel`, `mount`) interpret them.

use std::mem::size_of;

use rustix::fd::AsFd;
use rustix::io::Errno;
use rustix::ioctl::{ioctl, opcode, Opcode, Setter, Updater};

/// The kernel's `FS_VERITY_MAX_DIGEST_SIZE` (SHA-512); `fsverity::MAX_DIGEST_SIZE` is this.
pub(crate) const MAX_DIGEST_SIZE: usize = 64;

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
pub(crate) const FS_IOC_ENABLE_VERITY: Opcode = opcode::write::<EnableArg>(b'f', 133);
/// `_IOWR('f', 134, struct fsverity_digest)`.
pub(crate) const FS_IOC_MEASURE_VERITY: Opcode = opcode::read_write::<DigestHeader>(b'f', 134);

/// `FS_IOC_ENABLE_VERITY` with the given algorithm id and block size, no salt
/// and no signature.
pub(crate) fn enable_verity<Fd: AsFd>(
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
pub(crate) fn measure_verity<Fd: AsFd>(fd: Fd) -> Result<(u16, Vec<u8>), Errno> {
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

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` (Linux ≥ 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(size_of::<LoopInfo64>() == 232);
const _: () = assert!(size_of::<LoopConfig>() == 304);

/// `LOOP_CONFIGURE`, `_IO(0x4C, 0x0A)`: the argument is a pointer although
/// the number does not encode its size.
const LOOP_CONFIGURE: Opcode = 0x4C0A;
/// `LOOP_CTL_GET_FREE`, `_IO(0x4C, 0x82)`: returns a free device number.
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;

pub(crate) const LO_FLAGS_READ_ONLY: u32 = 1;
pub(crate) const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `LOOP_CTL_GET_FREE` on `/dev/loop-control`: the number of a free loop
/// device (allocating one if needed).
pub(crate) fn loop_ctl_get_free<Fd: AsFd>(control: Fd) -> Result<u32, Errno> {
    use std::os::fd::AsRawFd;
    // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns an int; the
    // descriptor is borrowed and valid for the call.
    let r = unsafe { libc::ioctl(control.as_fd().as_raw_fd(), LOOP_CTL_GET_FREE as _, 0) };
    if r < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(r as u32)
    }
}

/// `LOOP_CONFIGURE` on an unbound loop device: binds `backing` with `flags`
/// (`LO_FLAGS_*`), in one step, so no window exists where the device is bound
/// but not configured.
pub(crate) fn loop_configure<Dev: AsFd, Backing: AsFd>(
    dev: Dev,
    backing: Backing,
    flags: u32,
) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let arg = LoopConfig {
        fd: backing.as_fd().as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: 0,
            lo_sizelimit: 0,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: [0; 64],
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads a `struct loop_config` through the
    // pointer argument; `LoopConfig` is its `repr(C)` mirror (304 bytes,
    // asserted above). Setter passes a pointer to its owned copy, alive for
    // the call; the kernel copies it in and keeps no reference. The backing
    // fd is borrowed, so it stays open during the call (the kernel takes its
    // own reference to the file).
    unsafe { ioctl(dev, Setter::<LOOP_CONFIGURE, LoopConfig>::new(arg)) }
}

/// `struct mount_attr` (`MOUNT_ATTR_SIZE_VER0`).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const _: () = assert!(size_of::<MountAttr>() == 32);

/// `MOUNT_ATTR_IDMAP`.
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `mount_setattr(mnt, "", AT_EMPTY_PATH, {attr_set: MOUNT_ATTR_IDMAP,
/// userns_fd})`: makes the (detached, not yet attached) mount `mnt` an
/// idmapped mount using the id mapping of user namespace `userns`.
pub(crate) fn mount_set_idmap<Mnt: AsFd, Ns: AsFd>(mnt: Mnt, userns: Ns) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_fd().as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr(2) takes a dirfd, a NUL-terminated path, flags,
    // a pointer to `struct mount_attr` and its size. The path is a static
    // empty C string, `attr` is a `repr(C)` mirror of the VER0 layout whose
    // size we pass, alive for the call and only read by the kernel. Both
    // descriptors are borrowed and valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mnt.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            size_of::<MountAttr>(),
        )
    };
    if r < 0 {
        Err(Errno::from_raw_os_error(
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
        ))
    } else {
        Ok(())
    }
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
