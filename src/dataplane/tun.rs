//! TAP devices through `/dev/net/tun`, the part of link creation that
//! rtnetlink cannot do (the kernel's `tun` driver refuses RTM_NEWLINK), and
//! the user and group look-ups its owner and group need.
//!
//! All of the driver's `unsafe` but one `setns` (in
//! [`crate::dataplane::netlink::netns`]) is here: `ioctl` on the tun device
//! and the reentrant passwd/group look-ups. Every block says why it is
//! sound; everything outside it deals in names, ids and `io::Error`s.
//!
//! A TAP is made as `ip tuntap add mode tap` makes it: `IFF_TAP | IFF_NO_PI`
//! with `IFF_TUN_EXCL` (an existing device of that name is an error, never
//! silently reused), then owner, group and `TUNSETPERSIST`. No
//! `IFF_VNET_HDR`: the flags are the opener's choice, and each `TUNSETIFF`
//! on a persistent device replaces them, so QEMU (vhost, `vnet_hdr=on`)
//! sets what it needs when it attaches.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// The clone device every TUN/TAP is made through.
const TUN_DEVICE: &str = "/dev/net/tun";

/// A step of TAP creation that failed, with the OS error.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
pub struct TunError {
    /// The step, as the kernel names its ioctl (`TUNSETIFF`, ...) or the
    /// look-up that failed.
    pub step: &'static str,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl TunError {
    fn new(step: &'static str, source: io::Error) -> TunError {
        TunError { step, source }
    }

    /// The errno, when the failure was the OS's.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// The `ifreq` that names a device and carries the TUN flags.
fn ifreq(name: &str, flags: libc::c_int) -> Result<libc::ifreq, TunError> {
    let bytes = name.as_bytes();
    // ifr_name holds IFNAMSIZ bytes with the terminating NUL.
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        let message = format!("interface name {name:?} must be 1 to {} bytes without NUL", libc::IFNAMSIZ - 1);
        return Err(TunError::new("TUNSETIFF", io::Error::new(io::ErrorKind::InvalidInput, message)));
    }
    // SAFETY: ifreq is a C struct of integers, byte arrays and a union of
    // those; all zeroes is a valid value of every field (an empty name and
    // no flags).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // The TUN flags are a short in the kernel's struct (ifr_flags); every
    // flag used here fits in 16 bits.
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(req)
}

fn open_clone_device() -> Result<File, TunError> {
    // std opens with O_CLOEXEC, so the fd never leaks into children.
    OpenOptions::new().read(true).write(true).open(TUN_DEVICE).map_err(|e| TunError::new("open /dev/net/tun", e))
}

/// Sets the flags and name of the queue `file` is, creating the device when
/// no device has that name.
fn set_iff(file: &File, req: &mut libc::ifreq) -> Result<(), TunError> {
    // SAFETY: the fd is open for the duration of the call; TUNSETIFF reads
    // and writes one `struct ifreq`, and `req` is a valid, exclusively
    // borrowed ifreq that outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, req as *mut libc::ifreq) };
    if rc < 0 {
        return Err(TunError::new("TUNSETIFF", io::Error::last_os_error()));
    }
    Ok(())
}

/// An ioctl whose argument is a number, not a pointer.
fn ioctl_value(file: &File, step: &'static str, request: libc::Ioctl, value: libc::c_ulong) -> Result<(), TunError> {
    // SAFETY: the fd is open for the duration of the call; TUNSETOWNER,
    // TUNSETGROUP and TUNSETPERSIST take their argument by value (the
    // kernel casts the unsigned long, it dereferences nothing).
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, value) };
    if rc < 0 {
        return Err(TunError::new(step, io::Error::last_os_error()));
    }
    Ok(())
}

/// Creates the persistent TAP `name` in the calling thread's network
/// namespace, openable by `owner` and/or `group` (by id), down, with no
/// queue attached. All or nothing: the device becomes persistent in the
/// last step, and until then closing the fd (which every error path does)
/// destroys it.
pub fn create_persistent_tap(name: &str, owner: Option<u32>, group: Option<u32>) -> Result<(), TunError> {
    let mut req = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL)?;
    let file = open_clone_device()?;
    set_iff(&file, &mut req)?;
    if let Some(uid) = owner {
        ioctl_value(&file, "TUNSETOWNER", libc::TUNSETOWNER, libc::c_ulong::from(uid))?;
    }
    if let Some(gid) = group {
        ioctl_value(&file, "TUNSETGROUP", libc::TUNSETGROUP, libc::c_ulong::from(gid))?;
    }
    ioctl_value(&file, "TUNSETPERSIST", libc::TUNSETPERSIST, 1)?;
    Ok(())
}

/// Attaches a queue to the existing TAP `name` as QEMU does (`IFF_TAP |
/// IFF_NO_PI`, plus `IFF_VNET_HDR` when asked) and returns its fd: how a
/// hypervisor, or a test playing one, opens a TAP lanyard made.
pub fn attach_queue(name: &str, vnet_hdr: bool) -> Result<OwnedFd, TunError> {
    let vnet = if vnet_hdr { libc::IFF_VNET_HDR } else { 0 };
    let mut req = ifreq(name, libc::IFF_TAP | libc::IFF_NO_PI | vnet)?;
    let file = open_clone_device()?;
    set_iff(&file, &mut req)?;
    Ok(file.into())
}

/// What a passwd or group look-up found.
enum Lookup {
    Found(u32),
    Missing,
}

/// Calls a reentrant `get*nam_r` with a buffer that grows while the C
/// library says it is too small (ERANGE).
fn lookup_with_buffer(mut call: impl FnMut(&mut [libc::c_char]) -> Result<Lookup, i32>) -> io::Result<Lookup> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            Ok(found) => return Ok(found),
            Err(libc::ERANGE) if size < 1 << 20 => size *= 4,
            Err(errno) => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

fn c_name(what: &str, name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{what} {name:?} contains NUL")))
}

/// The uid of the user `name`; a name made only of digits that is no user's
/// is taken as the uid itself, as `ip tuntap` does.
pub fn user_id(name: &str) -> Result<u32, TunError> {
    let step = "look up the owner";
    let cname = c_name("user", name).map_err(|e| TunError::new(step, e))?;
    let found = lookup_with_buffer(|buf| {
        // SAFETY: passwd is a C struct of pointers and integers; all zeroes
        // (null pointers, zero ids) is a valid value, and getpwnam_r only
        // writes it.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: the NUL-terminated
        // name, the passwd to fill, the buffer with its true length for the
        // strings it points into, and the result slot. Only the uid (an
        // integer) is read afterwards, so nothing outlives `buf`.
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        match rc {
            0 if result.is_null() => Ok(Lookup::Missing),
            0 => Ok(Lookup::Found(pwd.pw_uid)),
            errno => Err(errno),
        }
    })
    .map_err(|e| TunError::new(step, e))?;
    resolve(found, name, "user", step)
}

/// The gid of the group `name`; digits that are no group's name are taken
/// as the gid itself.
pub fn group_id(name: &str) -> Result<u32, TunError> {
    let step = "look up the group";
    let cname = c_name("group", name).map_err(|e| TunError::new(step, e))?;
    let found = lookup_with_buffer(|buf| {
        // SAFETY: group is a C struct of pointers and integers; all zeroes
        // is a valid value, and getgrnam_r only writes it.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as for getpwnam_r: valid name, struct, buffer with its
        // length and result slot; only the gid is read afterwards.
        let rc = unsafe { libc::getgrnam_r(cname.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut result) };
        match rc {
            0 if result.is_null() => Ok(Lookup::Missing),
            0 => Ok(Lookup::Found(grp.gr_gid)),
            errno => Err(errno),
        }
    })
    .map_err(|e| TunError::new(step, e))?;
    resolve(found, name, "group", step)
}

fn resolve(found: Lookup, name: &str, what: &str, step: &'static str) -> Result<u32, TunError> {
    match found {
        Lookup::Found(id) => Ok(id),
        Lookup::Missing => name.parse::<u32>().map_err(|_| {
            TunError::new(
                step,
                io::Error::new(io::ErrorKind::NotFound, format!("no {what} named {name:?} on this host")),
            )
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_its_group_resolve() {
        assert_eq!(user_id("root").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
    }

    #[test]
    fn unknown_names_are_clear_errors_and_digits_are_ids() {
        let e = user_id("no-such-user-lanyard").unwrap_err();
        assert_eq!(e.to_string(), "look up the owner: no user named \"no-such-user-lanyard\" on this host");
        let e = group_id("no-such-group-lanyard").unwrap_err();
        assert!(e.to_string().contains("no group named"), "{e}");
        assert_eq!(user_id("4242").unwrap(), 4242);
        assert_eq!(group_id("4243").unwrap(), 4243);
    }

    #[test]
    fn names_the_kernel_cannot_hold_are_refused_before_any_ioctl() {
        for bad in ["", "sixteen-bytes-xx", "nul\0"] {
            let e = create_persistent_tap(bad, None, None).unwrap_err();
            assert_eq!(e.step, "TUNSETIFF", "{bad:?}");
            assert_eq!(e.source.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }

    #[test]
    fn ifreq_carries_name_and_flags() {
        let req = ifreq("tap0", libc::IFF_TAP | libc::IFF_NO_PI).unwrap();
        let name: Vec<u8> = req.ifr_name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
        assert_eq!(name, b"tap0");
        // SAFETY: ifreq() wrote ifru_flags, the union field read here.
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        assert_eq!(i32::from(flags), libc::IFF_TAP | libc::IFF_NO_PI);
    }
}
