//! Open-loop pacing of the fan-out publisher: when each send is due, and the time it carries.
//!
//! A send is stamped with the earlier of its scheduled and its actual time, and latency is
//! measured from that stamp. A publisher held back (by its window of unanswered sends, or a
//! stall) keeps the scheduled time, so the wait counts as latency (no coordinated omission); a
//! send may leave up to [`EARLY_NS`] ahead of its schedule and is then measured from when it
//! left. The slack exists because tokio's timer wakes at a millisecond's granularity, rounded
//! up: waiting for each exact time made the median send 0.4–1.2 ms late, for every server
//! alike, and that counted as the server's latency (bench/findings.md).

use std::time::Duration;

/// How far ahead of its schedule a send may leave: two ticks of tokio's timer, which rounds a
/// deadline up to its next tick and may fire a tick after that (with one tick the median send
/// was still 0.5 ms late in some runs).
pub const EARLY_NS: u64 = 2_000_000;

/// A publisher this far behind its schedule is held back by the server: it skips what is
/// overdue (counted) rather than stamp every later send ever later.
const SKIP_AFTER_NS: u64 = 1_000_000_000;

/// The schedule of one publisher at a fixed rate, in nanoseconds of `now_ns()`.
#[derive(Debug)]
pub struct Pacer {
    period_ns: u64,
    next_due: u64,
    /// Sends skipped because the publisher fell more than a second behind.
    pub skipped: u64,
}

impl Pacer {
    /// `period_ns` between sends (at least 1), the first due at `start`.
    pub fn new(period_ns: u64, start: u64) -> Pacer {
        Pacer { period_ns: period_ns.max(1), next_due: start, skipped: 0 }
    }

    /// The stamp of the next send if it may leave at `now`, and the schedule moves on; `None`
    /// while it is more than [`EARLY_NS`] ahead.
    pub fn next_send(&mut self, now: u64) -> Option<u64> {
        if self.next_due > now + EARLY_NS {
            return None;
        }
        let behind = now.saturating_sub(self.next_due);
        if behind > SKIP_AFTER_NS {
            let overdue = behind / self.period_ns;
            self.skipped += overdue;
            self.next_due += overdue * self.period_ns;
        }
        let stamp = self.next_due.min(now);
        self.next_due += self.period_ns;
        Some(stamp)
    }

    /// How long to wait at `now` before the next send may leave.
    pub fn wait(&self, now: u64) -> Duration {
        Duration::from_nanos(self.next_due.saturating_sub(now + EARLY_NS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn a_send_ahead_of_its_schedule_carries_the_time_it_left() {
        let mut pacer = Pacer::new(10 * MS, 100 * MS);
        assert_eq!(pacer.next_send(97 * MS), None, "3 ms ahead is too early");
        assert_eq!(pacer.wait(97 * MS), Duration::from_millis(1));
        assert_eq!(pacer.next_send(99 * MS), Some(99 * MS), "1 ms ahead leaves, stamped when it leaves");
        assert_eq!(pacer.next_send(99 * MS), None, "the next is due at 110 ms");
    }

    #[test]
    fn a_send_held_back_keeps_its_scheduled_time() {
        let mut pacer = Pacer::new(10 * MS, 100 * MS);
        // Held for 25 ms: three sends are due and leave now, each with its own schedule.
        let stamps: Vec<u64> = std::iter::from_fn(|| pacer.next_send(125 * MS)).collect();
        assert_eq!(stamps, vec![100 * MS, 110 * MS, 120 * MS]);
        assert_eq!(pacer.wait(125 * MS), Duration::from_millis(3));
        assert_eq!(pacer.skipped, 0);
    }

    #[test]
    fn a_publisher_more_than_a_second_behind_skips_and_counts_what_is_overdue() {
        let mut pacer = Pacer::new(10 * MS, 0);
        let stamp = pacer.next_send(1_500 * MS).expect("due");
        assert_eq!(pacer.skipped, 150);
        assert_eq!(stamp, 1_500 * MS, "stamped from the first send not skipped");
        assert_eq!(pacer.next_send(1_500 * MS), None, "the next is due 10 ms later");
        assert_eq!(pacer.wait(1_500 * MS), Duration::from_millis(8));
    }
}
