//! Decodes arbitrary bytes as a sibling set. The decoder must never panic,
//! and anything it accepts must be canonical: re-encoding gives back exactly
//! the input (replicas hash these bytes, so two encodings of one set would
//! make Merkle trees disagree forever).

#![no_main]

use holdfast_net::{DecodeLimits, SiblingSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // A small value cap lets the fuzzer reach the ValueTooLarge path cheaply.
    let limits = DecodeLimits { value_bytes_max: 4096 };
    if let Ok(set) = SiblingSet::decode(bytes, limits) {
        set.check_invariants();
        assert_eq!(set.encode(), bytes, "decoder accepted non-canonical bytes");
        assert_eq!(set.encoded_len(), bytes.len());
    }
});
