//! The delay line: which queued packets are due for release, as a pure function of the time
//! passed in (never read here).
//!
//! Packets leave in the order they arrived, each `add` after its arrival: a FIFO, because every
//! packet waits the same time. Changing `add` while packets are held moves their release times
//! with it, so the line stays in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The packets held on one queue, by id, with their arrival times.
#[derive(Debug, Clone)]
pub struct DelayLine {
    add: Duration,
    held: VecDeque<(u32, Instant)>,
}

impl DelayLine {
    /// An empty line holding each packet for `add`.
    pub fn new(add: Duration) -> DelayLine {
        DelayLine { add, held: VecDeque::new() }
    }

    /// The delay each packet gets.
    pub fn add(&self) -> Duration {
        self.add
    }

    /// Changes the delay, for held packets too (their release is `arrival + add`).
    pub fn set_add(&mut self, add: Duration) {
        self.add = add;
    }

    /// Packet `id` arrived at `now`.
    pub fn arrive(&mut self, id: u32, now: Instant) {
        self.held.push_back((id, now));
    }

    /// The packets due at `now` (arrived at least `add` before it), oldest first; they leave
    /// the line.
    pub fn release(&mut self, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        while let Some(&(id, at)) = self.held.front() {
            if at + self.add > now {
                break;
            }
            due.push(id);
            self.held.pop_front();
        }
        due
    }

    /// When the oldest held packet is due, if any is held.
    pub fn next_release(&self) -> Option<Instant> {
        self.held.front().map(|&(_, at)| at + self.add)
    }

    /// Every held packet, oldest first, due or not; the line is empty afterwards.
    pub fn drain(&mut self) -> Vec<u32> {
        self.held.drain(..).map(|(id, _)| id).collect()
    }

    /// How many packets are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no packet is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn each_packet_leaves_add_after_it_arrived_in_arrival_order() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(50 * MS);
        assert_eq!(line.next_release(), None);
        line.arrive(1, t0);
        line.arrive(2, t0 + 10 * MS);
        line.arrive(3, t0 + 10 * MS);
        assert_eq!(line.next_release(), Some(t0 + 50 * MS));
        assert!(line.release(t0 + 49 * MS).is_empty());
        assert_eq!(line.release(t0 + 50 * MS), vec![1]);
        assert_eq!(line.next_release(), Some(t0 + 60 * MS));
        line.arrive(4, t0 + 55 * MS);
        assert!(line.release(t0 + 59 * MS).is_empty());
        assert_eq!(line.release(t0 + 200 * MS), vec![2, 3, 4]);
        assert!(line.is_empty());
    }

    #[test]
    fn a_new_delay_applies_to_held_packets_and_drain_empties_the_line() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(50 * MS);
        line.arrive(7, t0);
        line.arrive(8, t0 + MS);
        line.set_add(10 * MS);
        assert_eq!(line.release(t0 + 10 * MS), vec![7]);
        assert_eq!(line.len(), 1);
        line.arrive(9, t0 + 20 * MS);
        assert_eq!(line.drain(), vec![8, 9]);
        assert_eq!(line.next_release(), None);
    }

    #[test]
    fn zero_delay_releases_at_once() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(Duration::ZERO);
        line.arrive(1, t0);
        assert_eq!(line.release(t0), vec![1]);
    }
}
