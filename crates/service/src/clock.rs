//! Time as the service sees it, behind a seam so lifetime tests can move it.

use std::sync::Mutex;

use time::OffsetDateTime;

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, to the millisecond (the precision records keep).
    fn now(&self) -> OffsetDateTime;
}

fn to_millis(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .expect("a millisecond is a valid nanosecond")
}

/// The wall clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        to_millis(OffsetDateTime::now_utc())
    }
}

/// A clock that only moves when told to: the tests' paused time.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    /// Starts at `t`.
    pub fn new(t: OffsetDateTime) -> Self {
        ManualClock(Mutex::new(to_millis(t)))
    }

    /// Moves time forward.
    pub fn advance(&self, by: time::Duration) {
        let mut t = self.0.lock().expect("clock lock");
        *t += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().expect("clock lock")
    }
}
