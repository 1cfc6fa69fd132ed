//! Raising `RLIMIT_MEMLOCK` so that glommio can start.
//!
//! This is the same small piece of `setrlimit` logic as
//! `holdfast_engine::disk::dma::raise_memlock_limit`, copied rather than
//! imported so that the load generator does not link (or wait to compile)
//! the whole storage engine.

use std::io;

/// What a glommio executor insists on (it checks the soft limit, which
/// every executor of the process shares). The load generator's executors
/// register little memory with their rings (see `IO_MEMORY_BYTES` in
/// [`crate::run`]), so this suffices for two of them.
const MEMLOCK_NEEDED_BYTES: u64 = 512 * 1024;

/// Raises the soft limit to the hard limit, or both to what glommio needs
/// when the hard limit is too low (which only a privileged process may
/// do; otherwise the `EPERM` comes back with a hint).
pub fn raise_memlock_limit() -> io::Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `getrlimit` writes one `rlimit` into the one we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let needed = MEMLOCK_NEEDED_BYTES as libc::rlim_t;
    if limit.rlim_cur >= needed {
        return Ok(());
    }
    let wanted = if limit.rlim_max >= needed {
        libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max }
    } else {
        libc::rlimit { rlim_cur: needed, rlim_max: needed }
    };
    // SAFETY: `setrlimit` only reads the `rlimit` we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &wanted) } != 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!(
                "cannot raise RLIMIT_MEMLOCK from {} (hard {}) to {}: {error}; raise \
                 `memlock` in /etc/security/limits.conf or run `ulimit -l unlimited`",
                limit.rlim_cur, limit.rlim_max, wanted.rlim_cur
            ),
        ));
    }
    Ok(())
}
