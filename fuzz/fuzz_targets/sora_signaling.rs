#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| livefilter_relay::publish::sora::signaling::fuzz_server_bytes(data));
