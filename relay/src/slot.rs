//! The newest-frame slot between decode and filter: holds at most one frame, so a slow filter
//! means dropped (and counted) frames, never a growing queue.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// What a wait on the slot returned.
#[derive(Debug, PartialEq, Eq)]
pub enum Take<T> {
    /// The newest frame.
    Frame(T),
    /// Nothing arrived within the timeout.
    Timeout,
    /// The slot was closed: shut down.
    Closed,
}

struct State<T> {
    item: Option<T>,
    closed: bool,
}

/// A single-item mailbox where a new item replaces the unread one.
pub struct NewestSlot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

impl<T> Default for NewestSlot<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                item: None,
                closed: false,
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> NewestSlot<T> {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `item`, returning the unread one it replaced (a stale frame to count).
    pub fn put(&self, item: T) -> Option<T> {
        // A panic elsewhere never leaves the slot half-updated, so poisoning is ignored.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = state.item.replace(item);
        drop(state);
        self.ready.notify_one();
        stale
    }

    /// Waits up to `timeout` for an item and takes it.
    pub fn take(&self, timeout: Duration) -> Take<T> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut state, _) = self
            .ready
            .wait_timeout_while(state, timeout, |s| s.item.is_none() && !s.closed)
            .unwrap_or_else(PoisonError::into_inner);
        match state.item.take() {
            Some(item) => Take::Frame(item),
            None if state.closed => Take::Closed,
            None => Take::Timeout,
        }
    }

    /// Drops any unread item (e.g. when the input session ends).
    pub fn clear(&self) -> Option<T> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).item.take()
    }

    /// Wakes the consumer for good.
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_new_frame_replaces_the_unread_one_and_returns_it_as_stale() {
        let slot = NewestSlot::new();
        assert_eq!(slot.put(1), None);
        assert_eq!(slot.put(2), Some(1));
        assert_eq!(slot.take(Duration::ZERO), Take::Frame(2));
        assert_eq!(slot.take(Duration::from_millis(1)), Take::Timeout);
    }

    #[test]
    fn a_waiting_consumer_wakes_on_put_and_on_close() {
        let slot = Arc::new(NewestSlot::new());
        let consumer = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || (slot.take(Duration::from_secs(10)), slot.take(Duration::from_secs(10))))
        };
        slot.put(7);
        // The second take must end with Closed, not wait out its 10 s.
        while slot.state.lock().unwrap().item.is_some() {
            std::thread::yield_now();
        }
        slot.close();
        assert_eq!(consumer.join().unwrap(), (Take::Frame(7), Take::Closed));
    }
}
