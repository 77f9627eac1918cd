//! The one lock-poisoning policy of the daemon.
//!
//! A std lock is poisoned when a thread panicked while holding it. Every
//! critical section in workcopy is a single insert, remove, replace or clone
//! of a value that is whole before and after, so the data behind a poisoned
//! lock is still consistent. A panic in one request (or FUSE callback) must
//! not take the service from everyone else, so poisoning is recovered from,
//! here and nowhere else.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Set when whoever asked for a piece of work no longer waits for it (the
/// control client hung up); long work checks it and stops.
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A reader that fails once its work is cancelled, so a parse stops early.
pub struct CancelRead<R> {
    pub inner: R,
    pub cancel: Cancel,
}

impl<R: std::io::Read> std::io::Read for CancelRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(std::io::Error::other("the client went away"));
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_serves() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = lock(&m2);
            panic!("poison it");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }

    #[test]
    fn a_cancelled_read_stops() {
        use std::io::Read;
        let cancel = Cancel::default();
        let mut r = CancelRead {
            inner: std::io::repeat(0),
            cancel: cancel.clone(),
        };
        let mut buf = [0u8; 16];
        assert_eq!(r.read(&mut buf).ok(), Some(16));
        cancel.cancel();
        assert!(r.read(&mut buf).is_err());
    }
}
