//! Byte-driven harnesses for the parsers that read network input: the VP8 and H.264
//! depacketizers, the frame assembler, and the size-bearing headers. Each takes arbitrary bytes,
//! drives the parser with them and checks its invariants (no panic, bounded memory, every
//! refusal an error or a counted drop), panicking only when an invariant breaks.
//!
//! Shared by the property tests (`cargo test`, a fixed case budget, stable Rust) and the
//! cargo-fuzz targets in `fuzz/` (nightly, for long runs).

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::assembler::{AssemblerConfig, FrameAssembler, RtpInput};
use super::bitstream;
use super::depacketize::{H264Depacketizer, PayloadFormat, depacketize_vp8};
use super::limits::{RefusalReason, SizeLimit};
use super::{AssembledFrame, IngestError};

/// The limits the assembler harness runs under: small, so fuzzed streams reach them.
pub const FUZZ_ASSEMBLER: AssemblerConfig = AssemblerConfig {
    max_reorder_packets: 8,
    max_reorder_delay: Duration::from_millis(100),
    max_frame_bytes: 1024,
    max_frame_packets: 16,
};

/// The longest payload the assembler harness produces.
const MAX_FUZZ_PAYLOAD: usize = 255;

fn check_payload_result(result: &Result<super::depacketize::PayloadInfo, IngestError>, grew: usize, len: usize) {
    match result {
        // Output never exceeds what the payload can carry: STAP-A turns a 2-byte size and a
        // 1-byte unit into a 4-byte start code and that unit; a FU-A start adds 3 bytes.
        Ok(_) => assert!(grew <= len * 2 + 4, "{grew} bytes out of a {len}-byte payload"),
        Err(IngestError::MalformedPayload { .. }) => {}
        Err(other) => panic!("unexpected error kind {other:?}"),
    }
}

/// One VP8 RTP payload through the depacketizer.
pub fn vp8_payload(data: &[u8]) {
    let mut out = Vec::new();
    let result = depacketize_vp8(data, &mut out);
    check_payload_result(&result, out.len(), data.len());
    if result.is_ok() {
        assert!(out.len() < data.len(), "the descriptor is never copied");
    } else {
        assert!(out.is_empty(), "a refused payload adds nothing");
    }
}

/// Splits `data` into length-prefixed payloads (one length byte each).
fn payloads(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (&len, rest) = data.split_first()?;
        let len = usize::from(len).min(rest.len());
        let (payload, rest) = rest.split_at(len);
        data = rest;
        Some(payload)
    })
}

/// A sequence of H.264 RTP payloads through one depacketizer.
pub fn h264_payloads(data: &[u8]) {
    let mut depacketizer = H264Depacketizer::default();
    let mut out = Vec::new();
    for payload in payloads(data) {
        let before = out.len();
        let result = depacketizer.depacketize(payload, &mut out);
        check_payload_result(&result, out.len() - before, payload.len());
    }
}

/// A stream of RTP packets through an assembler, described by `data`: per packet a control
/// byte (marker, arrival step, timestamp step, jumps, flushes), a sequence step (signed), and a
/// payload length, then the payload.
pub fn assembler(format: PayloadFormat, data: &[u8]) {
    let config = FUZZ_ASSEMBLER;
    let mut assembler = FrameAssembler::new(format, config);
    let start = Instant::now();
    let mut at = start;
    let (mut seq, mut ts) = (1000u16, 90_000u32);
    let mut emitted = 0u64;
    let mut rest = data;
    while let [control, step, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len()).min(MAX_FUZZ_PAYLOAD);
        let (payload, tail) = tail.split_at(len);
        rest = tail;
        seq = if control & 0x80 != 0 {
            seq.wrapping_add(u16::from(*step) << 8)
        } else {
            seq.wrapping_add_signed(i16::from(*step as i8))
        };
        if control & 0x40 != 0 {
            ts = ts.wrapping_add(u32::from(*step) * 1500);
        }
        at += Duration::from_millis(u64::from((control >> 1) & 0x07) * 20);
        let packet = RtpInput {
            sequence_number: seq,
            timestamp: ts,
            marker: control & 0x01 != 0,
            payload: Bytes::copy_from_slice(payload),
            arrival: at,
        };
        let mut frames = assembler.push(packet);
        if control & 0x20 != 0 {
            frames.extend(assembler.flush(at + config.max_reorder_delay));
        }
        for frame in &frames {
            check_frame(frame, &config);
        }
        emitted += frames.len() as u64;
        check_bounded(&assembler, &config);
    }
    let stats = assembler.stats();
    assert_eq!(stats.frames, emitted, "every emitted frame is counted");
    assert!(stats.dropped_frames >= stats.oversized_bytes + stats.oversized_packets);
    assert!(stats.malformed_packets <= stats.packets);
}

fn check_frame(frame: &AssembledFrame, config: &AssemblerConfig) {
    assert!(!frame.data.is_empty(), "empty frames are dropped");
    assert!(frame.data.len() <= config.max_frame_bytes, "{} bytes", frame.data.len());
    assert!(frame.packets <= config.max_frame_packets, "{} packets", frame.packets);
}

fn check_bounded(assembler: &FrameAssembler, config: &AssemblerConfig) {
    assert!(assembler.waiting_packets() <= config.max_reorder_packets + 1);
    let waiting = (config.max_reorder_packets + 1) * MAX_FUZZ_PAYLOAD;
    let frame = 2 * (config.max_frame_bytes + 2 * MAX_FUZZ_PAYLOAD + 8);
    assert!(
        assembler.buffered_bytes() <= waiting + frame,
        "{} bytes buffered",
        assembler.buffered_bytes()
    );
}

/// A frame's bitstream through the size readers and the limit check.
pub fn frame_headers(data: &[u8]) {
    let limit = SizeLimit::default();
    if let Ok(Some((w, h))) = bitstream::vp8_keyframe_size(data) {
        assert!(w < 1 << 14 && h < 1 << 14);
        assert!(data.len() >= 10 && data[0] & 1 == 0);
    }
    if let Ok((w, h)) = bitstream::h264_sps_size(data) {
        assert!(w > 0 && h > 0, "{w}x{h}");
    }
    let _ = bitstream::h264_largest_sps_size(data);
    for format in [PayloadFormat::Vp8, PayloadFormat::H264] {
        let frame = AssembledFrame {
            data: data.to_vec(),
            rtp_timestamp: 0,
            keyframe: true,
            first_arrival: Instant::now(),
            last_arrival: Instant::now(),
            packets: 1,
            discontinuity: false,
        };
        if let Err(refusal) = limit.check_frame(format, &frame) {
            assert!(
                matches!(
                    refusal.reason,
                    RefusalReason::MalformedHeader | RefusalReason::FrameTooLarge
                ),
                "{refusal}"
            );
        }
    }
}
