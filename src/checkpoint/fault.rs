//! Fault injection under the checkpoint's file operations, for tests of what a query
//! does on a full disk, a read-only or unreadable checkpoint, or a failing read.
//!
//! Every read and write of the checkpoint path (`write_atomic`, `read_file`, the file
//! sink's data files) first asks [`check`] whether a fault is injected for a directory
//! holding the file; if so it fails with that operating-system error, exactly as the
//! kernel would report it (`ENOSPC`, `EROFS`, `EACCES`, `EIO`, ...). Tests run as
//! root, where permission bits do not stop anything and a tmpfs of limited size needs
//! `mount`: injecting the error below millrace's code is what makes these faults
//! reproducible on every machine. With nothing injected the check is one atomic load.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The kind of file operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Reading a file (or checking that it exists).
    Read,
    /// Creating, writing, renaming or syncing a file.
    Write,
}

struct Fault {
    id: usize,
    under: PathBuf,
    op: Op,
    errno: i32,
}

static FAULTS: Mutex<Vec<Fault>> = Mutex::new(Vec::new());
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// An injected fault; dropping it removes the fault (the disk is "repaired").
#[must_use = "the fault is removed when the guard is dropped"]
pub struct FaultGuard {
    id: usize,
}

/// Makes every `op` on a file under `under` fail with the OS error `errno` (e.g.
/// `libc::ENOSPC`) until the returned guard is dropped. Faults are process-wide, so
/// tests give each its own directory.
pub fn inject(under: &Path, op: Op, errno: i32) -> FaultGuard {
    let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
    let mut faults = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    faults.push(Fault {
        id,
        under: under.to_path_buf(),
        op,
        errno,
    });
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    FaultGuard { id }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        let mut faults = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
        faults.retain(|f| f.id != self.id);
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Fails with the injected error if a fault covers `op` on `path`.
pub fn check(path: &Path, op: Op) -> io::Result<()> {
    if ACTIVE.load(Ordering::SeqCst) == 0 {
        return Ok(());
    }
    let faults = FAULTS.lock().unwrap_or_else(|p| p.into_inner());
    match faults
        .iter()
        .find(|f| f.op == op && path.starts_with(&f.under))
    {
        Some(fault) => Err(io::Error::from_raw_os_error(fault.errno)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_hits_its_directory_until_dropped() {
        let dir = Path::new("/nonexistent/fault-test");
        let guard = inject(dir, Op::Write, libc::ENOSPC);
        let err = check(&dir.join("x"), Op::Write).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(check(&dir.join("x"), Op::Read).is_ok());
        assert!(check(Path::new("/nonexistent/other"), Op::Write).is_ok());
        drop(guard);
        assert!(check(&dir.join("x"), Op::Write).is_ok());
    }
}
