//! When a poller reads next: the cadence by a task's age, and the back-off
//! after a failed read. The settings live in `config`; what they mean for
//! the hub's pollers lives here, next to them.

use std::time::Duration;

use crate::config::{Backoff, PollCadence};

impl PollCadence {
    /// The interval between reads of a task `age` old.
    pub(crate) fn interval_at(&self, age: Duration) -> Duration {
        if age < self.fast_until {
            self.fast
        } else if age < self.medium_until {
            self.medium
        } else {
            self.slow
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based): `initial * 2^(attempt-1)`
    /// capped at `max`, then "equal jitter" (half fixed, half random) so that
    /// many pollers failing together do not retry together.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.max);
        let half = capped / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cadence_follows_kie_guidance_by_age() {
        let c = PollCadence::default();
        assert_eq!(
            c.interval_at(Duration::from_secs(0)),
            Duration::from_secs(2)
        );
        assert_eq!(
            c.interval_at(Duration::from_secs(31)),
            Duration::from_secs(5)
        );
        assert_eq!(
            c.interval_at(Duration::from_secs(121)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d30 = b.delay(30);
            assert!(d30 >= Duration::from_millis(500) && d30 <= Duration::from_millis(1000));
        }
    }
}
