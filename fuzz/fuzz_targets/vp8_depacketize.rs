#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| livefilter_relay::ingest::fuzz::vp8_payload(data));
