//! How many keys a run checks and which ones.

use super::ReconcileMode;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// The default sampled fraction: 10 000 parts per million, i.e. 1 %.
pub const DEFAULT_FRACTION_PPM: u32 = 10_000;
/// The default least number of keys a sampled run checks.
pub const DEFAULT_FLOOR: usize = 20;

const MILLION: u128 = 1_000_000;

/// How many keys a sampled run checks: `max(ceil(fraction × population), floor)`, never more
/// than the population and never more than the run's budget.
///
/// The fraction is in parts per million so that the size is exact integer arithmetic: with
/// the default 1 % and floor 20, populations up to 2 000 are sampled 20 keys (or all of them
/// when there are fewer), 2 001 keys give 21, 100 000 give 1 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SamplingPolicy {
    /// The sampled fraction in parts per million (10 000 = 1 %). Values above 1 000 000
    /// act as 1 000 000: a run never checks more keys than there are.
    pub fraction_ppm: u32,
    /// The least number of keys a sampled run checks (when there are that many).
    pub floor: usize,
}

impl SamplingPolicy {
    /// 1 % of the keys, at least 20.
    pub const DEFAULT: Self = Self { fraction_ppm: DEFAULT_FRACTION_PPM, floor: DEFAULT_FLOOR };

    /// How many of `population` keys a run in `mode` checks, given that it may check at most
    /// `budget` keys (`usize::MAX` for no cap).
    ///
    /// * [`ReconcileMode::Sampled`]: `max(ceil(fraction × population), floor)`, then at most
    ///   `population`, then at most `budget`.
    /// * [`ReconcileMode::Full`]: `min(population, budget)`.
    #[must_use]
    pub fn sample_size(&self, population: usize, mode: ReconcileMode, budget: usize) -> usize {
        let wanted = match mode {
            ReconcileMode::Full => population,
            ReconcileMode::Sampled => {
                let share = (population as u128 * u128::from(self.fraction_ppm)).div_ceil(MILLION);
                usize::try_from(share).unwrap_or(usize::MAX).max(self.floor).min(population)
            }
        };
        wanted.min(budget)
    }

    /// The keys a run in `mode` checks, out of `keys`.
    ///
    /// * [`ReconcileMode::Sampled`]: [`Self::sample_size`] keys drawn uniformly without
    ///   repeats, reproducibly from `seed` (see [`choose_indices`]); they are returned in
    ///   their input order.
    /// * [`ReconcileMode::Full`]: the first `min(len, budget)` keys, in input order. (A full
    ///   run whose budget is smaller than the population therefore always checks the same
    ///   prefix; give full runs a budget of `usize::MAX` to check everything.)
    ///
    /// Generic over the key type; with [`super::SampleKey`] keys it is
    /// `Vec<SampleKey> -> Vec<SampleKey>`.
    #[must_use]
    pub fn choose_sample<T>(
        &self,
        mut keys: Vec<T>,
        mode: ReconcileMode,
        budget: usize,
        seed: u64,
    ) -> Vec<T> {
        match mode {
            ReconcileMode::Full => {
                keys.truncate(budget);
                keys
            }
            ReconcileMode::Sampled => {
                let population = keys.len();
                let count = self.sample_size(population, mode, budget);
                if count == population {
                    return keys;
                }
                keep_indices(keys, &choose_indices(population, count, seed))
            }
        }
    }
}

impl Default for SamplingPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// [`SamplingPolicy::sample_size`] with the default policy (1 %, at least 20).
#[must_use]
pub fn sample_size(population: usize, mode: ReconcileMode, budget: usize) -> usize {
    SamplingPolicy::DEFAULT.sample_size(population, mode, budget)
}

/// [`SamplingPolicy::choose_sample`] with the default policy (1 %, at least 20).
#[must_use]
pub fn choose_sample<T>(keys: Vec<T>, mode: ReconcileMode, budget: usize, seed: u64) -> Vec<T> {
    SamplingPolicy::DEFAULT.choose_sample(keys, mode, budget, seed)
}

/// `min(count, population)` distinct indices below `population`, drawn uniformly at random
/// from a ChaCha8 generator seeded with `seed`, in ascending order.
///
/// The same `(population, count, seed)` always gives the same indices with this build (the
/// `rand` and `rand_chacha` versions are pinned by the lockfile). Use it when the keys are
/// not in memory: draw the indices, then read the keys at those positions.
#[must_use]
pub fn choose_indices(population: usize, count: usize, seed: u64) -> Vec<usize> {
    let count = count.min(population);
    if count == 0 {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut indices = rand::seq::index::sample(&mut rng, population, count).into_vec();
    indices.sort_unstable();
    indices
}

/// A sampling seed for the run of `read_model` at the cadence slot `slot_millis`: the same
/// run (e.g. retried after a crash) re-checks the same keys, and different read models and
/// slots check different ones.
#[must_use]
pub fn sample_seed(read_model: &str, slot_millis: u64) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"driftless/reconcile/sample-seed\0");
    hasher.update(&(read_model.len() as u64).to_le_bytes());
    hasher.update(read_model.as_bytes());
    hasher.update(&slot_millis.to_le_bytes());
    let hash = hasher.finalize();
    let mut seed = [0u8; 8];
    for (out, byte) in seed.iter_mut().zip(hash.as_bytes()) {
        *out = *byte;
    }
    u64::from_le_bytes(seed)
}

/// The items at the ascending positions `sorted`, in order.
fn keep_indices<T>(items: Vec<T>, sorted: &[usize]) -> Vec<T> {
    let mut wanted = sorted.iter().copied().peekable();
    let mut out = Vec::with_capacity(sorted.len());
    for (at, item) in items.into_iter().enumerate() {
        match wanted.peek() {
            None => break,
            Some(&next) if next == at => {
                out.push(item);
                wanted.next();
            }
            Some(_) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const SAMPLED: ReconcileMode = ReconcileMode::Sampled;
    const FULL: ReconcileMode = ReconcileMode::Full;
    const NO_CAP: usize = usize::MAX;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("key-{i:06}")).collect()
    }

    #[test]
    fn sample_size_follows_the_documented_rule() {
        // (population, mode, budget, expected)
        let cases = [
            (0, SAMPLED, NO_CAP, 0),
            (1, SAMPLED, NO_CAP, 1),
            (5, SAMPLED, NO_CAP, 5),
            (19, SAMPLED, NO_CAP, 19),
            (20, SAMPLED, NO_CAP, 20),
            (21, SAMPLED, NO_CAP, 20),
            (100, SAMPLED, NO_CAP, 20),
            (1_999, SAMPLED, NO_CAP, 20),
            (2_000, SAMPLED, NO_CAP, 20),
            (2_001, SAMPLED, NO_CAP, 21),
            (2_100, SAMPLED, NO_CAP, 21),
            (2_101, SAMPLED, NO_CAP, 22),
            (5_000, SAMPLED, NO_CAP, 50),
            (100_000, SAMPLED, NO_CAP, 1_000),
            (100_001, SAMPLED, NO_CAP, 1_001),
            (10_000_000, SAMPLED, NO_CAP, 100_000),
            (100_000, SAMPLED, 300, 300),
            (100_000, SAMPLED, 0, 0),
            (10, SAMPLED, 3, 3),
            (0, FULL, NO_CAP, 0),
            (7, FULL, NO_CAP, 7),
            (100_000, FULL, NO_CAP, 100_000),
            (100_000, FULL, 5_000, 5_000),
            (10, FULL, 0, 0),
            (usize::MAX, FULL, NO_CAP, usize::MAX),
            (usize::MAX, SAMPLED, NO_CAP, usize::MAX / 100 + 1),
        ];
        for (population, mode, budget, expected) in cases {
            assert_eq!(
                sample_size(population, mode, budget),
                expected,
                "population {population}, {mode}, budget {budget}"
            );
        }
    }

    #[test]
    fn a_custom_policy_is_honoured() {
        let tenth = SamplingPolicy { fraction_ppm: 100_000, floor: 5 };
        assert_eq!(tenth.sample_size(1_000, SAMPLED, NO_CAP), 100);
        assert_eq!(tenth.sample_size(30, SAMPLED, NO_CAP), 5);
        let everything = SamplingPolicy { fraction_ppm: u32::MAX, floor: 0 };
        assert_eq!(everything.sample_size(1_000, SAMPLED, NO_CAP), 1_000);
        let nothing = SamplingPolicy { fraction_ppm: 0, floor: 0 };
        assert_eq!(nothing.sample_size(1_000, SAMPLED, NO_CAP), 0);
        assert!(nothing.choose_sample(keys(1_000), SAMPLED, NO_CAP, 1).is_empty());
    }

    #[test]
    fn an_empty_universe_gives_an_empty_sample() {
        assert!(choose_sample(Vec::<String>::new(), SAMPLED, NO_CAP, 7).is_empty());
        assert!(choose_sample(Vec::<String>::new(), FULL, NO_CAP, 7).is_empty());
        assert!(choose_indices(0, 10, 7).is_empty());
        assert!(choose_indices(10, 0, 7).is_empty());
    }

    #[test]
    fn a_small_universe_is_sampled_whole() {
        let all = keys(15);
        assert_eq!(choose_sample(all.clone(), SAMPLED, NO_CAP, 3), all);
        assert_eq!(choose_indices(15, 40, 3), (0..15).collect::<Vec<_>>());
    }

    #[test]
    fn full_mode_returns_everything_in_order_up_to_the_budget() {
        let all = keys(500);
        assert_eq!(choose_sample(all.clone(), FULL, NO_CAP, 1), all);
        assert_eq!(choose_sample(all.clone(), FULL, 500, 1), all);
        assert_eq!(choose_sample(all.clone(), FULL, 120, 1), all.get(..120).unwrap_or_default().to_vec());
        assert!(choose_sample(all, FULL, 0, 1).is_empty());
    }

    #[test]
    fn sampled_keys_are_distinct_members_in_input_order() {
        for (population, budget, seed) in
            [(50, NO_CAP, 1), (2_000, NO_CAP, 2), (10_000, NO_CAP, 3), (10_000, 30, 4)]
        {
            let all = keys(population);
            let sample = choose_sample(all.clone(), SAMPLED, budget, seed);
            assert_eq!(sample.len(), sample_size(population, SAMPLED, budget));
            let distinct: BTreeSet<&String> = sample.iter().collect();
            assert_eq!(distinct.len(), sample.len(), "repeats in {sample:?}");
            assert!(sample.windows(2).all(|w| matches!(w, [a, b] if a < b)), "not in input order");
            let universe: BTreeSet<&String> = all.iter().collect();
            assert!(sample.iter().all(|k| universe.contains(k)));
        }
    }

    #[test]
    fn the_seed_decides_the_sample() {
        let a = choose_sample(keys(10_000), SAMPLED, NO_CAP, 11);
        let b = choose_sample(keys(10_000), SAMPLED, NO_CAP, 11);
        let c = choose_sample(keys(10_000), SAMPLED, NO_CAP, 12);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(choose_indices(1_000_000, 50, 9), choose_indices(1_000_000, 50, 9));
        assert_ne!(choose_indices(1_000_000, 50, 9), choose_indices(1_000_000, 50, 10));
    }

    #[test]
    fn indices_come_from_the_whole_range() {
        // With 20 of 100 drawn 200 times, every index turns up and both ends are reached.
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            seen.extend(choose_indices(100, 20, seed));
        }
        assert_eq!(seen.len(), 100);
    }

    #[test]
    fn every_index_is_equally_likely() {
        // 20 of 100, 20 000 draws: each index is expected 4 000 times. The chi-square statistic
        // over 100 cells (99 degrees of freedom) exceeds 148.2 with probability 0.001 for a
        // uniform sampler (sampling without replacement only makes it smaller).
        const POPULATION: usize = 100;
        const COUNT: usize = 20;
        const TRIALS: u64 = 20_000;
        let mut hits = [0u64; POPULATION];
        for seed in 0..TRIALS {
            let drawn = choose_indices(POPULATION, COUNT, seed);
            assert_eq!(drawn.len(), COUNT);
            for i in drawn {
                if let Some(h) = hits.get_mut(i) {
                    *h += 1;
                }
            }
        }
        let expected = (TRIALS as f64) * (COUNT as f64) / (POPULATION as f64);
        let mut chi_square = 0.0;
        for (i, &h) in hits.iter().enumerate() {
            let h = h as f64;
            assert!((h - expected).abs() < expected * 0.1, "index {i} drawn {h} times, expected ~{expected}");
            chi_square += (h - expected).powi(2) / expected;
        }
        assert!(chi_square < 148.2, "chi-square {chi_square} over 99 degrees of freedom");
        assert_eq!(hits.iter().sum::<u64>(), TRIALS * COUNT as u64);
    }

    #[test]
    fn seeds_differ_per_read_model_and_slot() {
        assert_eq!(sample_seed("listing_card", 1_000), sample_seed("listing_card", 1_000));
        assert_ne!(sample_seed("listing_card", 1_000), sample_seed("listing_card", 1_001));
        assert_ne!(sample_seed("listing_card", 1_000), sample_seed("listing_cards", 1_000));
        assert_ne!(sample_seed("a", 0), sample_seed("b", 0));
    }

    proptest! {
        #[test]
        fn samples_respect_every_bound(population in 0usize..5_000, budget in 0usize..6_000, seed in any::<u64>(), full in any::<bool>()) {
            let mode = if full { FULL } else { SAMPLED };
            let size = sample_size(population, mode, budget);
            prop_assert!(size <= population);
            prop_assert!(size <= budget);
            if !full {
                let one_percent = population / 100 + usize::from(population % 100 != 0);
                prop_assert_eq!(size, one_percent.max(DEFAULT_FLOOR).min(population).min(budget));
            }
            let all: Vec<usize> = (0..population).collect();
            let sample = choose_sample(all, mode, budget, seed);
            prop_assert_eq!(sample.len(), size);
            prop_assert!(sample.windows(2).all(|w| matches!(w, [a, b] if a < b)));
            prop_assert!(sample.iter().all(|&k| k < population));
        }

        #[test]
        fn sampled_sizes_are_at_least_one_percent(population in 0usize..1_000_000) {
            let size = sample_size(population, SAMPLED, NO_CAP);
            prop_assert!(size * 100 >= population);
            prop_assert!(size.saturating_sub(1) * 100 < population.max(DEFAULT_FLOOR * 100));
        }
    }
}
