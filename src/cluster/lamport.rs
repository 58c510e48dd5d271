//! Lamport logical clocks: the counter every cluster message and log line carries, so that the logs
//! of all nodes merge into one order consistent with causality (`super::log::merge_logs`).

use serde::{Deserialize, Serialize};

/// A Lamport clock: increments on every local event and send; on receive it jumps to
/// `max(local, received) + 1`.
///
/// Every stamp it hands out is strictly greater than the previous one, so the events of one node
/// are totally ordered, and a receive is always stamped after the matching send.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LamportClock {
    time: u64,
}

impl LamportClock {
    /// A clock at zero: the first event is stamped 1.
    pub fn new() -> Self {
        LamportClock { time: 0 }
    }

    /// A clock that resumes at `time` (a restarted node restores the bound it persisted).
    pub fn starting_at(time: u64) -> Self {
        LamportClock { time }
    }

    /// The stamp of the latest event.
    pub fn time(&self) -> u64 {
        self.time
    }

    /// A local event: increments and returns the event's stamp.
    pub fn tick(&mut self) -> u64 {
        // Saturating: 2^64 events will not happen, and wrapping to 0 would break the order.
        self.time = self.time.saturating_add(1);
        self.time
    }

    /// A send: a local event whose stamp travels with the message.
    pub fn send(&mut self) -> u64 {
        self.tick()
    }

    /// A receive of a message stamped `received`: `max(local, received) + 1`, returned.
    pub fn receive(&mut self, received: u64) -> u64 {
        self.time = self.time.max(received).saturating_add(1);
        self.time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_and_send_increment() {
        let mut clock = LamportClock::new();
        assert_eq!(clock.tick(), 1);
        assert_eq!(clock.send(), 2);
        assert_eq!(clock.time(), 2);
    }

    #[test]
    fn receive_takes_max_plus_one() {
        let mut clock = LamportClock::starting_at(5);
        assert_eq!(
            clock.receive(10),
            11,
            "a later sender pulls the clock forward"
        );
        assert_eq!(
            clock.receive(3),
            12,
            "an earlier sender still advances by one"
        );
    }

    #[test]
    fn receive_is_after_send() {
        let mut a = LamportClock::new();
        let mut b = LamportClock::starting_at(100);
        let stamp = a.send();
        let got = b.receive(stamp);
        assert!(got > stamp);
        // And a reply from b lands after b's receive on a's side.
        let reply = b.send();
        assert!(a.receive(reply) > reply);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let mut clock = LamportClock::starting_at(u64::MAX);
        assert_eq!(clock.tick(), u64::MAX);
        assert_eq!(clock.receive(u64::MAX), u64::MAX);
    }

    proptest::proptest! {
        #[test]
        fn stamps_strictly_increase(ops in proptest::collection::vec(proptest::option::of(0u64..1000), 1..50)) {
            let mut clock = LamportClock::new();
            let mut last = 0;
            for op in ops {
                let stamp = match op {
                    Some(received) => {
                        let stamp = clock.receive(received);
                        proptest::prop_assert!(stamp > received);
                        stamp
                    }
                    None => clock.tick(),
                };
                proptest::prop_assert!(stamp > last);
                last = stamp;
            }
        }
    }
}
