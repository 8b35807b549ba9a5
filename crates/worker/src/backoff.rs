//! Backoff between attempts (protocol §11.6): fixed, exponential, optional jitter, custom.

use std::time::Duration;

use bullpen_core::opts::{Backoff, BackoffKind};

/// A custom backoff strategy: `(attempts_made, kind name, error message) -> delay`, where
/// `None` means "do not retry" and `Some(ZERO)` an immediate retry.
pub type CustomBackoff = std::sync::Arc<dyn Fn(u32, &str, &str) -> Option<Duration> + Send + Sync>;

/// What to do after a failed attempt that may be retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryPlan {
    /// Retry after this delay (zero = at once).
    After(Duration),
    /// The strategy said no: fail for good.
    GiveUp,
    /// The backoff type is unknown and no custom strategy is set.
    UnknownStrategy,
}

/// Cheap, non-cryptographic randomness in `[0, 1)` for jitter.
pub(crate) fn unit_random() -> f64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

fn jittered(max_ms: u64, jitter: Option<f64>, r: f64) -> u64 {
    match jitter {
        Some(j) if j > 0.0 => {
            let low = max_ms as f64 * (1.0 - j.min(1.0));
            (low + (max_ms as f64 - low) * r).floor() as u64
        }
        _ => max_ms,
    }
}

/// The delay before the next attempt, where `attempts_made` counts finished attempts
/// before this failure (so the attempt that just failed is number `attempts_made + 1`).
pub fn plan(
    backoff: Option<&Backoff>,
    attempts_made: u32,
    error: &str,
    custom: Option<&CustomBackoff>,
    r: f64,
) -> RetryPlan {
    let Some(b) = backoff else {
        return RetryPlan::After(Duration::ZERO);
    };
    let delay = b.delay_ms.unwrap_or(0);
    let n = attempts_made.saturating_add(1);
    match &b.kind {
        BackoffKind::Fixed => RetryPlan::After(Duration::from_millis(jittered(delay, b.jitter, r))),
        BackoffKind::Exponential => {
            let factor = 2f64.powi(i32::try_from(n - 1).unwrap_or(i32::MAX).min(62));
            let max = (factor * delay as f64).round();
            let max = if max.is_finite() && max < u64::MAX as f64 {
                max as u64
            } else {
                u64::MAX
            };
            RetryPlan::After(Duration::from_millis(jittered(max, b.jitter, r)))
        }
        other => match custom {
            Some(f) => match f(attempts_made, other_name(other), error) {
                Some(d) => RetryPlan::After(d),
                None => RetryPlan::GiveUp,
            },
            None => RetryPlan::UnknownStrategy,
        },
    }
}

fn other_name(k: &BackoffKind) -> &str {
    k.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_and_exponential_follow_bullmq() {
        let f = Backoff::fixed(1000);
        assert_eq!(
            plan(Some(&f), 0, "e", None, 0.5),
            RetryPlan::After(Duration::from_millis(1000))
        );
        let e = Backoff::exponential(1000);
        assert_eq!(
            plan(Some(&e), 0, "e", None, 0.5),
            RetryPlan::After(Duration::from_millis(1000))
        );
        assert_eq!(
            plan(Some(&e), 1, "e", None, 0.5),
            RetryPlan::After(Duration::from_millis(2000))
        );
        assert_eq!(
            plan(Some(&e), 3, "e", None, 0.5),
            RetryPlan::After(Duration::from_millis(8000))
        );
        assert_eq!(
            plan(None, 3, "e", None, 0.5),
            RetryPlan::After(Duration::ZERO)
        );
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let f = Backoff::fixed(1000).with_jitter(0.5);
        assert_eq!(
            plan(Some(&f), 0, "e", None, 0.0),
            RetryPlan::After(Duration::from_millis(500))
        );
        assert_eq!(
            plan(Some(&f), 0, "e", None, 0.999),
            RetryPlan::After(Duration::from_millis(999))
        );
    }

    #[test]
    fn custom_kinds_need_a_strategy() {
        let c = Backoff::new(BackoffKind::Custom("linear".into()));
        assert_eq!(
            plan(Some(&c), 0, "e", None, 0.5),
            RetryPlan::UnknownStrategy
        );
        let s: CustomBackoff = std::sync::Arc::new(|n, kind, _| {
            (kind == "linear" && n < 2).then(|| Duration::from_millis(100 * u64::from(n + 1)))
        });
        assert_eq!(
            plan(Some(&c), 1, "e", Some(&s), 0.5),
            RetryPlan::After(Duration::from_millis(200))
        );
        assert_eq!(plan(Some(&c), 2, "e", Some(&s), 0.5), RetryPlan::GiveUp);
    }

    proptest! {
        #[test]
        fn exponential_saturates_instead_of_overflowing(n in 0u32..u32::MAX, d in 0u64..u64::MAX / 2, r in 0.0f64..1.0) {
            let e = Backoff::exponential(d).with_jitter(0.3);
            prop_assert!(matches!(plan(Some(&e), n, "e", None, r), RetryPlan::After(_)));
        }

        #[test]
        fn exponential_never_decreases_without_jitter(n in 0u32..60, d in 1u64..100_000) {
            let e = Backoff::exponential(d);
            let a = plan(Some(&e), n, "e", None, 0.5);
            let b = plan(Some(&e), n + 1, "e", None, 0.5);
            match (a, b) {
                (RetryPlan::After(x), RetryPlan::After(y)) => prop_assert!(y >= x),
                _ => prop_assert!(false),
            }
        }
    }
}
