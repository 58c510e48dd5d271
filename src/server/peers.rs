//! The per-peer limit on jobs: how many CHECK, RUN and BUILD jobs one client address may have
//! queued or running at once, so that one client cannot take every worker. The acceptor
//! (`super::reader`) takes a [`PeerSlot`] before queueing a job; the slot travels with the job
//! (`super::queue::QueuedJob`) and is given back when the job is dropped, however it ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Jobs per client address.
#[derive(Debug)]
pub struct PeerJobs {
    limit: usize,
    active: Mutex<HashMap<IpAddr, usize>>,
}

impl PeerJobs {
    /// A tracker allowing `limit` jobs per address (at least 1).
    pub fn new(limit: usize) -> Arc<PeerJobs> {
        Arc::new(PeerJobs {
            limit: limit.max(1),
            active: Mutex::new(HashMap::new()),
        })
    }

    /// The most jobs one address may have.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Jobs `ip` has queued or running now.
    pub fn active(&self, ip: IpAddr) -> usize {
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        active.get(&ip).copied().unwrap_or(0)
    }

    /// A slot for one more job of `ip`, or `None` when it already has `limit`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<PeerSlot> {
        let mut active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        let count = active.entry(ip).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(PeerSlot {
            peers: Arc::clone(self),
            ip,
        })
    }
}

/// One job's place in its peer's count; dropping it frees the place.
#[derive(Debug)]
pub struct PeerSlot {
    peers: Arc<PeerJobs>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut active = self
            .peers
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = active.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                active.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_gets_at_most_the_limit() {
        let peers = PeerJobs::new(2);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = peers.try_acquire(a).expect("first");
        let _second = peers.try_acquire(a).expect("second");
        assert!(peers.try_acquire(a).is_none());
        let _other = peers
            .try_acquire(b)
            .expect("another address is counted apart");
        drop(first);
        assert_eq!(peers.active(a), 1);
        assert!(peers.try_acquire(a).is_some());
    }
}
