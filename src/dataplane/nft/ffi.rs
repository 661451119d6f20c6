//! libnftables in-process: the library is loaded at run time
//! (`dlopen("libnftables.so.1")`, shipped by the `nftables` package), so
//! building lanyard needs no headers and a host without nftables gets a
//! typed error instead of a binary that does not start.
//!
//! This is the only module of the nftables driver with `unsafe` code. It
//! exposes one safe type, [`Context`]: a libnftables context whose output
//! and errors are captured in memory, used to run command buffers (text or
//! JSON) with a chosen output format.
//!
//! Threads: a context must not be used by two threads at once (the driver
//! keeps it behind a `Mutex`), and libnftables 1.0.6 also has process-wide
//! state that is not guarded (a one-time initialisation flag in
//! `nft_ctx_new`, the interface cache released after every command), so
//! every call into the library additionally holds one process-wide lock.
//! Contexts are long-lived, and one command costs far more than the lock.
//!
//! Namespaces: `nft_ctx_new` opens the context's netlink socket, which
//! belongs to the network namespace of the thread that creates the context,
//! whichever thread uses it later.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::kernel::KernelError;

/// The library's file name (its SONAME), as the `nftables` package installs it.
const LIBRARY: &str = "libnftables.so.1";

/// `NFT_CTX_DEFAULT` (include/nftables/libnftables.h): a context with a
/// netlink socket.
const NFT_CTX_DEFAULT: u32 = 0;

/// Output flags of `nft_ctx_output_set_flags` (include/nftables/libnftables.h,
/// the same values from nftables 0.9.1 to 1.1).
const NFT_CTX_OUTPUT_JSON: c_uint = 1 << 4;
const NFT_CTX_OUTPUT_TERSE: c_uint = 1 << 11;

/// What a command prints, and how input is read: in libnftables 1.0.6 a
/// context with JSON output also tries to parse its input as JSON first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// nft's text syntax.
    Text,
    /// Text without set elements (`nft -t`): a table's header without
    /// reading thousands of elements.
    Terse,
    /// nftables JSON (`nft -j`); JSON input is accepted as well.
    Json,
}

impl Output {
    fn flags(self) -> c_uint {
        match self {
            Output::Text => 0,
            Output::Terse => NFT_CTX_OUTPUT_TERSE,
            Output::Json => NFT_CTX_OUTPUT_JSON,
        }
    }
}

type CtxNewFn = unsafe extern "C" fn(u32) -> *mut c_void;
type CtxFreeFn = unsafe extern "C" fn(*mut c_void);
type CtxBufferFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type CtxGetBufferFn = unsafe extern "C" fn(*mut c_void) -> *const c_char;
type CtxSetFlagsFn = unsafe extern "C" fn(*mut c_void, c_uint);
type RunCmdFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> c_int;

/// The functions lanyard calls, resolved once per process. The library is
/// never unloaded: its contexts may live as long as the process.
struct Library {
    ctx_new: CtxNewFn,
    ctx_free: CtxFreeFn,
    buffer_output: CtxBufferFn,
    buffer_error: CtxBufferFn,
    get_output_buffer: CtxGetBufferFn,
    get_error_buffer: CtxGetBufferFn,
    output_set_flags: CtxSetFlagsFn,
    run_cmd_from_buffer: RunCmdFn,
    run_cmd_from_filename: RunCmdFn,
}

static LOADED: OnceLock<Result<Library, String>> = OnceLock::new();

/// Held around every call into libnftables (see the module comment).
static LIBRARY_LOCK: Mutex<()> = Mutex::new(());

fn library_lock() -> MutexGuard<'static, ()> {
    // The guarded data is `()`: a panic elsewhere leaves nothing half-done.
    LIBRARY_LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(why: impl std::fmt::Display) -> KernelError {
    KernelError::Unavailable(format!("{LIBRARY} not found: install nftables ({why})"))
}

/// The last `dlerror()` text.
fn dl_error() -> String {
    // SAFETY: dlerror takes no arguments; it returns NULL or a pointer to a
    // NUL-terminated string valid until the next dl* call on this thread,
    // which is copied before anything else runs.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

impl Library {
    fn load() -> Result<Library, String> {
        let name = CString::new(LIBRARY).map_err(|e| e.to_string())?;
        // SAFETY: `name` is a valid NUL-terminated string. Loading runs the
        // library's initialisers, those of a system library.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(dl_error());
        }
        let symbol = |name: &str| -> Result<*mut c_void, String> {
            let cname = CString::new(name).map_err(|e| e.to_string())?;
            // SAFETY: `handle` is a live handle from dlopen (never closed)
            // and `cname` a valid NUL-terminated string.
            let ptr = unsafe { libc::dlsym(handle, cname.as_ptr()) };
            if ptr.is_null() {
                Err(format!("{name}: {}", dl_error()))
            } else {
                Ok(ptr)
            }
        };
        // SAFETY: every transmute below turns a symbol that libnftables
        // exports as a function into a pointer to a function whose C
        // prototype in libnftables.h matches the Rust type (struct nft_ctx *
        // as an opaque pointer, uint32_t as u32, unsigned int as c_uint).
        unsafe {
            Ok(Library {
                ctx_new: std::mem::transmute::<*mut c_void, CtxNewFn>(symbol("nft_ctx_new")?),
                ctx_free: std::mem::transmute::<*mut c_void, CtxFreeFn>(symbol("nft_ctx_free")?),
                buffer_output: std::mem::transmute::<*mut c_void, CtxBufferFn>(symbol("nft_ctx_buffer_output")?),
                buffer_error: std::mem::transmute::<*mut c_void, CtxBufferFn>(symbol("nft_ctx_buffer_error")?),
                get_output_buffer: std::mem::transmute::<*mut c_void, CtxGetBufferFn>(symbol(
                    "nft_ctx_get_output_buffer",
                )?),
                get_error_buffer: std::mem::transmute::<*mut c_void, CtxGetBufferFn>(symbol(
                    "nft_ctx_get_error_buffer",
                )?),
                output_set_flags: std::mem::transmute::<*mut c_void, CtxSetFlagsFn>(symbol(
                    "nft_ctx_output_set_flags",
                )?),
                run_cmd_from_buffer: std::mem::transmute::<*mut c_void, RunCmdFn>(symbol("nft_run_cmd_from_buffer")?),
                run_cmd_from_filename: std::mem::transmute::<*mut c_void, RunCmdFn>(symbol(
                    "nft_run_cmd_from_filename",
                )?),
            })
        }
    }

    fn get() -> Result<&'static Library, KernelError> {
        LOADED.get_or_init(Library::load).as_ref().map_err(unavailable)
    }
}

/// Whether this namespace's kernel answers on NETLINK_NETFILTER. libnftables
/// calls `exit()` when it cannot open that socket, so it is tried first.
fn probe_netfilter_netlink() -> Result<(), KernelError> {
    // SAFETY: plain socket(2) call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_NETFILTER) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(KernelError::Unavailable(format!("nftables: cannot open a netfilter netlink socket: {e}")));
    }
    // SAFETY: `fd` was just returned by socket(2) and is closed once.
    unsafe { libc::close(fd) };
    Ok(())
}

/// What libnftables printed for a failed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    /// Its error output (nft's messages, several lines).
    pub message: String,
}

/// One libnftables context with buffered output and errors.
pub struct Context {
    raw: NonNull<c_void>,
    library: &'static Library,
}

// SAFETY: a libnftables context has no thread affinity (no thread-local
// state; its netlink socket is a file descriptor), so it may move between
// threads. It is not Sync: `run` takes `&mut self`, so callers serialise
// use (the driver keeps it in a Mutex).
unsafe impl Send for Context {}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("raw", &self.raw).finish()
    }
}

impl Context {
    /// A context in the calling thread's network namespace.
    pub fn new() -> Result<Context, KernelError> {
        let library = Library::get()?;
        probe_netfilter_netlink()?;
        let (raw, buffered) = {
            let _lock = library_lock();
            // SAFETY: NFT_CTX_DEFAULT is a valid flag value; the library
            // lock covers nft_ctx_new's unguarded one-time initialisation.
            let raw = unsafe { (library.ctx_new)(NFT_CTX_DEFAULT) };
            let raw =
                NonNull::new(raw).ok_or_else(|| KernelError::Unavailable("nftables: nft_ctx_new failed".into()))?;
            // SAFETY: `raw` is the live context just created.
            let buffered =
                unsafe { (library.buffer_output)(raw.as_ptr()) == 0 && (library.buffer_error)(raw.as_ptr()) == 0 };
            (raw, buffered)
        };
        // Owned from here on: an early return frees it.
        let context = Context { raw, library };
        if !buffered {
            return Err(KernelError::Unavailable("nftables: cannot buffer libnftables output".into()));
        }
        Ok(context)
    }

    /// Runs `commands` (one nft transaction when they change anything) and
    /// returns what they printed in `output` format, or nft's error text.
    ///
    /// Several lines of commands are read from an in-memory file (memfd)
    /// rather than a buffer: libnftables 1.0.6 shows an error in a buffer
    /// against the buffer's first line, whichever line it is in, while for
    /// a file it prints the right line and its number. One-line commands
    /// (the listings) use the buffer.
    pub fn run(&mut self, commands: &str, output: Output) -> Result<String, CommandError> {
        let file = if commands.trim_end().contains('\n') { MemFile::with(commands) } else { None };
        let source = match &file {
            Some(f) => CString::new(f.path.as_str()),
            None => CString::new(commands),
        }
        .map_err(|_| CommandError { message: "command text contains a NUL byte".into() })?;
        let run = if file.is_some() { self.library.run_cmd_from_filename } else { self.library.run_cmd_from_buffer };
        let raw = self.raw.as_ptr();
        let _lock = library_lock();
        // SAFETY: `raw` is a live context used by this thread alone (&mut
        // self) under the library lock; `source` (the commands, or the
        // name of the file holding them, open until `file` drops) is a
        // NUL-terminated string that outlives the call. The buffers
        // returned by the get_*_buffer functions are NUL-terminated strings
        // owned by the context, valid until its next call: both are copied
        // right away.
        let (rc, out, err) = unsafe {
            (self.library.output_set_flags)(raw, output.flags());
            let rc = run(raw, source.as_ptr());
            (
                rc,
                copy_c_string((self.library.get_output_buffer)(raw)),
                copy_c_string((self.library.get_error_buffer)(raw)),
            )
        };
        if rc == 0 {
            Ok(out)
        } else {
            // "/proc/self/fd/7:6:11-22: Error: ..." reads "line 6:11-22: ...".
            let message = match &file {
                Some(f) => err.replace(&format!("{}:", f.path), "line "),
                None => err,
            };
            Err(CommandError { message })
        }
    }
}

/// Commands in an anonymous in-memory file, named by its /proc path.
struct MemFile {
    /// Kept open while libnftables reads the file by its path.
    _file: std::fs::File,
    path: String,
}

impl MemFile {
    /// None when the kernel offers no memfd (then the buffer is used).
    fn with(text: &str) -> Option<MemFile> {
        // SAFETY: the name is a NUL-terminated literal; flags are constants.
        let fd = unsafe { libc::memfd_create(c"lanyard-nft".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.write_all(text.as_bytes()).ok()?;
        Some(MemFile { path: format!("/proc/self/fd/{}", file.as_raw_fd()), _file: file })
    }
}

/// Copies a C string; NULL gives an empty string.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string valid for the call.
unsafe fn copy_c_string(ptr: *const c_char) -> String {
    if ptr.is_null() {
        String::new()
    } else {
        // SAFETY: the caller guarantees a valid NUL-terminated string.
        unsafe { CStr::from_ptr(ptr) }.to_string_lossy().into_owned()
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let _lock = library_lock();
        // SAFETY: `raw` came from nft_ctx_new, is freed exactly once (here),
        // and no reference to it outlives `self`. nft_ctx_free also
        // releases the process-wide interface cache: hence the lock.
        unsafe { (self.library.ctx_free)(self.raw.as_ptr()) };
    }
}
