//! Audit and oversight: what the quality team uses to prove the record is whole and to see what
//! a rule change would do. Everything here streams over the store with bounded memory.

pub mod dashboard;
pub mod disparity;
pub mod export;
pub mod replay;
pub mod verify;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Tells long audit work (verify, replay) that nobody waits for its answer any more: its client
/// went away, or the service is stopping and has closed the connection. The work checks it
/// between pieces and stops, instead of holding the cores (and the store, which a stopping
/// service closes last) until it is done.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// A cancel that nothing ever sets: for the command line, whose work ends with the process.
    pub fn never() -> Self {
        Cancel::default()
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels the work when dropped: held by the request that waits for it, so a
    /// request dropped before the work is done (its connection closed) cancels it.
    pub fn when_dropped(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// See [`Cancel::when_dropped`].
#[derive(Debug)]
pub struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        (self.0).0.store(true, Ordering::Relaxed);
    }
}
