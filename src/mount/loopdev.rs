//! Read-only, autoclearing loop devices for kernels whose EROFS cannot read
//! an image file directly.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use rustix::io::Errno;

use crate::sys::{loop_configure, loop_ctl_get_free, LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY};

/// A configured loop device. With autoclear set, the kernel detaches it once
/// the last opener (this handle, then the mounted filesystem) closes it.
pub struct LoopDevice {
    pub path: PathBuf,
    _dev: File,
}

/// Binds `backing` to a free loop device, read-only and autoclearing.
pub fn attach(backing: &File) -> io::Result<LoopDevice> {
    let control = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/loop-control")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/loop-control: {e}")))?;
    // Another process may grab the device between GET_FREE and CONFIGURE
    // (EBUSY): ask again.
    for _ in 0..64 {
        let n = loop_ctl_get_free(&control)?;
        let path = PathBuf::from(format!("/dev/loop{n}"));
        let dev = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(d) => d,
            // The node may appear a moment after the kernel made the device.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
        match loop_configure(&dev, backing, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR) {
            Ok(()) => return Ok(LoopDevice { path, _dev: dev }),
            Err(Errno::BUSY) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{}: LOOP_CONFIGURE: {e}", path.display()),
                ))
            }
        }
    }
    Err(io::Error::other("no free loop device after 64 tries"))
}
