#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| livefilter_relay::filter::params::fuzz_patch_bytes(data));
