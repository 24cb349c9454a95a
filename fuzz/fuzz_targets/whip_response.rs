#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| livefilter_relay::publish::whip::fuzz_created_response(data));
