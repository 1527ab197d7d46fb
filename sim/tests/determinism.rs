//! Property: for any seed, every catalog scenario runs to the same Outcome bytes twice (and
//! still passes its expectations: no expectation in the catalog depends on the seed).

mod support;

use ambient_scenarios::backend::RunOptions;
use ambient_scenarios::check_outcome;
use proptest::prelude::*;
use support::{catalog, world};

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn any_seed_gives_the_same_outcome_twice(seed in any::<u64>(), which in 0usize..64) {
        let files = catalog();
        let w = world(&files[which % files.len()]);
        let opts = RunOptions { seed: Some(seed), ..RunOptions::default() };
        let a = ambient_sim::run(&w, &opts).unwrap();
        let b = ambient_sim::run(&w, &opts).unwrap();
        prop_assert_eq!(a.outcome.seed, seed);
        prop_assert_eq!(a.outcome.to_json(), b.outcome.to_json(), "{} seed {}", w.id, seed);
        let failures = check_outcome(&w, &a.outcome);
        prop_assert!(failures.is_empty(), "{} seed {}: {:?}", w.id, seed, failures);
    }
}
