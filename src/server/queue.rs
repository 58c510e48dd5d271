//! The bounded queue between the acceptor and the workers: a Mutex-guarded deque and a Condvar.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Instant;

use crate::protocol::Request;

/// A whole request waiting for a worker.
#[derive(Debug)]
pub struct QueuedJob {
    /// The client's connection, in blocking mode.
    pub stream: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
    /// The request, read in full.
    pub request: Request,
    /// When the connection was accepted.
    pub accepted_at: Instant,
    /// When the request was complete and queued.
    pub queued_at: Instant,
    /// The job's place in its client's count of jobs (none for PING, INFO, STATS); freed when the
    /// job is dropped.
    pub peer_slot: Option<super::peers::PeerSlot>,
}

#[derive(Debug, Default)]
struct State {
    jobs: VecDeque<QueuedJob>,
    closed: bool,
    /// Workers waiting for a job: with none, a push wakes nobody (and costs no system call).
    idle: usize,
}

/// A bounded multi-producer, multi-consumer queue of jobs.
#[derive(Debug)]
pub struct JobQueue {
    state: Mutex<State>,
    ready: Condvar,
    capacity: usize,
}

impl JobQueue {
    /// An empty queue holding at most `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        JobQueue {
            state: Mutex::new(State::default()),
            ready: Condvar::new(),
            capacity,
        }
    }

    /// Adds a job, or gives it back when the queue is full or closed.
    // The job comes back by value so the caller can still answer it; it is moved, not copied.
    #[allow(clippy::result_large_err)]
    pub fn try_push(&self, job: QueuedJob) -> Result<(), QueuedJob> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.closed || state.jobs.len() >= self.capacity {
            return Err(job);
        }
        state.jobs.push_back(job);
        let wake = state.idle > 0;
        drop(state);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Waits for a job; `None` once the queue is closed.
    pub fn pop(&self) -> Option<QueuedJob> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.closed {
                return None;
            }
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            state.idle += 1;
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            state.idle -= 1;
        }
    }

    /// Whether a push would be refused for want of room.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Jobs waiting now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .len()
    }

    /// Closes the queue, wakes every worker, and returns the jobs that never started.
    pub fn close(&self) -> Vec<QueuedJob> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.closed = true;
        let left = state.jobs.drain(..).collect();
        drop(state);
        self.ready.notify_all();
        left
    }
}
