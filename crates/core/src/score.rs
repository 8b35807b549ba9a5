//! Score encodings of the `delayed` and `prioritized` sorted sets.
//!
//! Delayed: `due_ms * 4096 + seq` with `seq` in `0..4096` keeping insertion order inside one
//! millisecond. Prioritized: `priority * 2^32 + (counter mod 2^32)`. Both must stay below 2^53
//! so that Redis' double scores stay exact.

use crate::error::{Error, Result};
use crate::opts::MAX_PRIORITY;

/// Multiplier of the delayed score.
pub const DELAY_FACTOR: u64 = 4096;
/// Largest exact integer of a double.
pub const MAX_EXACT: u64 = 1 << 53;
/// Latest due time (ms) whose delayed score stays exact: about the year 2039.
pub const MAX_DUE_MS: u64 = MAX_EXACT / DELAY_FACTOR - 1;

/// Delayed score of a job due at `due_ms` with sequence `seq` (clamped to 4095).
pub fn delayed_score(due_ms: u64, seq: u64) -> Result<u64> {
    if due_ms > MAX_DUE_MS {
        return Err(Error::Validation {
            field: "delay",
            reason: format!("due time {due_ms} ms exceeds the encodable range (max {MAX_DUE_MS})"),
        });
    }
    Ok(due_ms * DELAY_FACTOR + seq.min(DELAY_FACTOR - 1))
}

/// The due time (ms) of a delayed score (fractional scores truncate).
pub fn due_of_delayed(score: f64) -> u64 {
    if score <= 0.0 {
        0
    } else {
        (score / DELAY_FACTOR as f64) as u64
    }
}

/// Prioritized score for `priority` (1..=2^21-1) and the `pc` counter value.
pub fn prioritized_score(priority: u32, counter: u64) -> Result<u64> {
    if priority == 0 || priority > MAX_PRIORITY {
        return Err(Error::Validation {
            field: "priority",
            reason: format!("{priority} is outside 1..={MAX_PRIORITY}"),
        });
    }
    Ok(u64::from(priority) * (1 << 32) + (counter % (1 << 32)))
}

/// The priority of a prioritized score.
pub fn priority_of(score: u64) -> u32 {
    u32::try_from(score >> 32).unwrap_or(u32::MAX)
}

/// Checks that a job created at `timestamp_ms` with `delay_ms` has an encodable due time.
pub fn check_delay(timestamp_ms: u64, delay_ms: u64) -> Result<u64> {
    let due = timestamp_ms
        .checked_add(delay_ms)
        .ok_or_else(|| Error::Validation {
            field: "delay",
            reason: format!("{delay_ms} ms overflows"),
        })?;
    delayed_score(due, 0).map(|_| due)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn matches_node_vectors() {
        // A job added at 1795325730083 with delay 60000 (protocol §3.1).
        assert_eq!(
            delayed_score(1_795_325_790_083, 0).expect("ok"),
            7_353_654_436_179_968
        );
        // Priorities 7 then 2 with pc 1 and 2 (§3.2).
        assert_eq!(prioritized_score(7, 1).expect("ok"), 30_064_771_073);
        assert_eq!(prioritized_score(2, 2).expect("ok"), 8_589_934_594);
    }

    #[test]
    fn rejects_out_of_range() {
        assert!(prioritized_score(0, 1).is_err());
        assert!(prioritized_score(MAX_PRIORITY + 1, 1).is_err());
        assert!(check_delay(u64::MAX, 1).is_err());
        assert!(check_delay(MAX_DUE_MS, 1).is_err());
        assert!(check_delay(1_795_325_730_083, 60_000).is_ok());
    }

    proptest! {
        #[test]
        fn delayed_scores_round_trip_and_order(due in 0u64..=MAX_DUE_MS, seq in 0u64..4096) {
            let s = delayed_score(due, seq).expect("in range");
            prop_assert!(s < MAX_EXACT);
            prop_assert_eq!(due_of_delayed(s as f64), due);
            if due < MAX_DUE_MS {
                prop_assert!(delayed_score(due + 1, 0).expect("in range") > s);
            }
        }

        #[test]
        fn prioritized_scores_round_trip_and_order(p in 1u32..=MAX_PRIORITY, c in 0u64..u64::MAX) {
            let s = prioritized_score(p, c).expect("in range");
            prop_assert!(s < MAX_EXACT);
            prop_assert_eq!(priority_of(s), p);
            if p < MAX_PRIORITY {
                prop_assert!(prioritized_score(p + 1, 0).expect("in range") > s);
            }
        }
    }
}
