#![no_main]

use libfuzzer_sys::fuzz_target;
use livefilter_relay::ingest::PayloadFormat;

fuzz_target!(|data: &[u8]| livefilter_relay::ingest::fuzz::assembler(PayloadFormat::H264, data));
