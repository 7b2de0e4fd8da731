//! baton's descriptor limit (`RLIMIT_NOFILE`) and its workers'.
//!
//! baton holds a descriptor per listener, per control or metrics client,
//! per generation (notify socket, pipes while spawning): it raises its own
//! soft limit to the hard one at start, as systemd does for itself. Its
//! workers and build steps get back the soft limit baton was started with,
//! because programs that use `select()` break with descriptors above 1024
//! ([`spawn`](crate::spawn) sets it between fork and exec).

use std::io;
use std::sync::OnceLock;

/// Descriptors baton needs besides one per listener: stdio, the runtime,
/// signals, the guardian's pipe, the control and metrics sockets, and a
/// generation being spawned while another drains.
pub const RESERVED: u64 = 32;

/// The limit to restore in children, when baton changed its own.
static FOR_CHILDREN: OnceLock<libc::rlimit> = OnceLock::new();

/// What [`raise`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The soft limit baton was started with (its children get it back).
    pub original: u64,
    /// baton's soft limit now.
    pub now: u64,
}

/// Too few descriptors to run at all.
#[derive(Debug, thiserror::Error)]
#[error(
    "baton needs at least {needed} open files ({RESERVED} plus one per listener) but RLIMIT_NOFILE allows {limit}: raise it (ulimit -n, or LimitNOFILE= in a systemd unit)"
)]
pub struct TooFew {
    /// What baton needs.
    pub needed: u64,
    /// What it may have.
    pub limit: u64,
}

/// Raise baton's soft limit to the hard one, and remember the original
/// for the processes it starts. Call it once, at start.
pub fn raise() -> io::Result<Limits> {
    let original = get()?;
    let mut raised = original;
    raised.rlim_cur = original.rlim_max;
    // SAFETY: setrlimit reads the struct it is given.
    if raised.rlim_cur != original.rlim_cur
        && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0
    {
        let _ = FOR_CHILDREN.set(original);
    } else {
        // Unchanged (an unlimited hard limit cannot be the soft one).
        raised = original;
    }
    Ok(Limits {
        original: original.rlim_cur,
        now: raised.rlim_cur,
    })
}

/// Refuse to run with fewer descriptors than `listeners` need.
pub fn check(limits: Limits, listeners: usize) -> Result<(), TooFew> {
    let needed = RESERVED + listeners as u64;
    if limits.now < needed {
        return Err(TooFew {
            needed,
            limit: limits.now,
        });
    }
    Ok(())
}

/// The limit a child must be given back, if baton changed its own.
pub(crate) fn for_children() -> Option<libc::rlimit> {
    FOR_CHILDREN.get().copied()
}

fn get() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_few_names_what_is_needed_and_how_to_raise_it() {
        let limits = Limits {
            original: 33,
            now: 33,
        };
        assert!(check(limits, 1).is_ok());
        let err = check(limits, 2).unwrap_err().to_string();
        assert!(
            err.starts_with("baton needs at least 34 open files"),
            "{err}"
        );
        assert!(err.contains("allows 33"), "{err}");
        assert!(err.contains("ulimit -n"), "{err}");
    }
}
