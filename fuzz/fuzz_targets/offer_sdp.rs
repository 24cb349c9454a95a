#![no_main]

use libfuzzer_sys::fuzz_target;
use livefilter_relay::codec::VideoCodec;

// The browser's offer as /offer and PATCH /offer/<session> see it: the pure pre-check, then
// the answer shaping and address rewriting applied to whatever text came in.
fuzz_target!(|data: &[u8]| {
    let sdp = String::from_utf8_lossy(data);
    let _ = livefilter_relay::offer::check_offer("offer", &sdp, &[VideoCodec::Vp8, VideoCodec::H264]);
    let _ = livefilter_relay::answer::with_start_bitrate(&sdp, 2000);
    let public = ["203.0.113.7".parse().expect("address")];
    let _ = livefilter_relay::ice::rewrite_sdp(&sdp, &public);
});
