//! Seed sweeps that say how to replay a failure.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

/// The environment variable that restricts [`run_seeds`] to one seed (decimal or `0x` hex).
pub const SEED_VAR: &str = "P2PD_SIM_SEED";

/// Runs `f` once per seed. If a run panics, prints
/// `simulation failed with seed N; replay with P2PD_SIM_SEED=N` and re-raises the panic.
///
/// When `P2PD_SIM_SEED` is set, only that seed runs (whatever `seeds` holds).
///
/// # Panics
/// When `f` panics, or `P2PD_SIM_SEED` is not a number.
pub fn run_seeds(seeds: impl IntoIterator<Item = u64>, f: impl Fn(u64)) {
    let seeds: Vec<u64> = match std::env::var(SEED_VAR) {
        Ok(v) => vec![parse_seed(&v).unwrap_or_else(|| panic!("{SEED_VAR}={v:?} is not a u64"))],
        Err(_) => seeds.into_iter().collect(),
    };
    for seed in seeds {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(seed))) {
            eprintln!("simulation failed with seed {seed}; replay with {SEED_VAR}={seed}");
            resume_unwind(panic);
        }
    }
}

/// A seed in decimal or `0x` hexadecimal.
pub(crate) fn parse_seed(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seeds() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed(" 0x2a "), Some(42));
        assert_eq!(parse_seed("x"), None);
    }

    #[test]
    fn a_failing_seed_is_re_raised() {
        let seen = std::cell::RefCell::new(Vec::new());
        let r = catch_unwind(AssertUnwindSafe(|| {
            run_seeds([1, 2, 3], |s| {
                seen.borrow_mut().push(s);
                assert_ne!(s, 2, "seed 2 fails");
            })
        }));
        if std::env::var(SEED_VAR).is_err() {
            assert!(r.is_err());
            assert_eq!(*seen.borrow(), vec![1, 2]);
        }
    }
}
