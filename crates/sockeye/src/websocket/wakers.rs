//! Wakers: the tasks waiting on the transport. Writers wait behind one shared waker
//! ([`Writers`]); the reading task is parked in the connection's state, to be woken when
//! a writer queues bytes that it is to write out.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Waker};

use tokio::io::{AsyncRead, AsyncWrite};

use super::pump::Inner;

/// The tasks waiting to write, behind one waker. A transport remembers only the waker of
/// the task that polled it last; given that task's, a task that stops waiting (its send
/// future dropped, say by a timeout) would take the wakeup with it and strand the
/// others. The transport gets this one instead, which wakes them all.
#[derive(Default)]
pub(super) struct Writers(Mutex<Vec<Waker>>);

impl Writers {
    /// Adds the task to those waiting to write (allocating the list in `slot` on first
    /// use); returns the waker to give the transport instead of the task's own.
    pub(super) fn park(slot: &mut Option<Arc<Writers>>, cx: &Context<'_>) -> Waker {
        Self::park_waker(slot, cx.waker())
    }

    /// [`Writers::park`] for a waker other than the polling task's.
    pub(super) fn park_waker(slot: &mut Option<Arc<Writers>>, waker: &Waker) -> Waker {
        let writers = slot.get_or_insert_with(Default::default);
        {
            let mut wakers = writers.0.lock().unwrap_or_else(PoisonError::into_inner);
            if !wakers.iter().any(|w| w.will_wake(waker)) {
                wakers.push(waker.clone());
            }
        }
        Waker::from(Arc::clone(writers))
    }

    /// Whether a task waits to write now (`slot` allocated at the first that did).
    pub(super) fn any_waiting(slot: &Option<Arc<Writers>>) -> bool {
        slot.as_ref().is_some_and(|writers| {
            !writers
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        })
    }

    /// Wakes every waiting task, if any ever waited.
    pub(super) fn wake_all(slot: &Option<Arc<Writers>>) {
        if let Some(writers) = slot {
            std::task::Wake::wake_by_ref(writers);
        }
    }
}

impl std::task::Wake for Writers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakers = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers {
            waker.wake();
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Inner<S> {
    /// Remembers the reading task's waker, without a clone when it is the same task
    /// as last time.
    pub(super) fn park_reader(&mut self, cx: &Context<'_>) {
        match &self.reader_waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => self.reader_waker = Some(cx.waker().clone()),
        }
    }

    pub(super) fn wake_reader(&mut self) {
        if let Some(waker) = self.reader_waker.take() {
            waker.wake();
        }
    }
}
