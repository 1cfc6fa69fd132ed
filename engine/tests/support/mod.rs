//! What the seeded simulation tests share.

#![allow(dead_code)]

use holdfast_engine::cluster::coordinator::ClientRequest;
use holdfast_net::VersionVector;

/// A blind put of `value` to `key` (empty context, the default W).
pub fn put(key: &[u8], value: &str) -> ClientRequest {
    ClientRequest::Put {
        key: key.to_vec(),
        value: Some(value.as_bytes().to_vec()),
        context: VersionVector::new(),
        w: 0,
    }
}

/// Runs `test` for every seed, naming the seed that failed.
/// `HOLDFAST_SEED=<n>` runs just seed n; `HOLDFAST_SEEDS=<n>` changes how
/// many seeds run (from 0).
pub fn for_seeds(default_count: u64, test: impl Fn(u64)) {
    if let Ok(seed) = std::env::var("HOLDFAST_SEED") {
        test(seed.parse().expect("HOLDFAST_SEED is a number"));
        return;
    }
    let count = std::env::var("HOLDFAST_SEEDS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(default_count);
    for seed in 0..count {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(seed)));
        if let Err(panic) = outcome {
            eprintln!("failed on seed {seed}; replay with HOLDFAST_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
    }
}
