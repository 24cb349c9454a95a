//! Property tests of every parser the network reaches in the ingest, on stable Rust with a
//! fixed case budget: random bytes, and valid inputs mutated (flipped, cut, spliced), through
//! the harnesses in [`super::fuzz`], which check for panics, bounded memory and that every
//! refusal is an error or a counted drop.

use proptest::prelude::*;

use super::bitstream::build;
use super::depacketize::PayloadFormat;
use super::fuzz;

/// Cases per property: tens of thousands, a few seconds each in a debug build.
const CASES: u32 = 20_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `valid` with some bytes replaced, some cut off, some appended.
fn mutated(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    (
        proptest::collection::vec((0..len.max(1), any::<u8>()), 0..4),
        0..=len,
        proptest::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut v = valid.clone();
            for (i, b) in flips {
                if let Some(x) = v.get_mut(i) {
                    *x = b;
                }
            }
            v.truncate(cut.max(1));
            v.extend(tail);
            v
        })
}

/// Size-bearing headers: valid ones of any size, mutated, and random bytes.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        (1u16..16384, 1u16..16384).prop_flat_map(|(w, h)| mutated(build::vp8_keyframe(w, h, &[0; 4]))),
        (1u32..1024, 1u32..1024).prop_flat_map(|(w, h)| mutated(build::h264_sps(w * 16, h * 16))),
    ]
}

/// The control byte of the assembler harness, weighted towards long frames of contiguous
/// packets (so the per-frame limits are reached) with some reordering, loss, jumps and flushes.
fn control() -> impl Strategy<Value = u8> {
    use proptest::bool::weighted;
    (weighted(0.05), weighted(0.08), weighted(0.03), weighted(0.1), 0u8..8).prop_map(
        |(marker, next_frame, jump, flush, arrival_step)| {
            u8::from(jump) << 7
                | u8::from(next_frame) << 6
                | u8::from(flush) << 5
                | (arrival_step % 3) << 1
                | u8::from(marker)
        },
    )
}

/// One RTP packet of the assembler harness: control, sequence step, length, payload.
fn packet_record(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..255),
        proptest::sample::select(valid).prop_flat_map(mutated),
    ];
    let step = prop_oneof![17 => Just(1u8), 2 => (253u8..=255).prop_union(0u8..=3), 1 => any::<u8>()];
    (control(), step, payload).prop_map(|(control, step, payload)| {
        let mut record = vec![control, step, payload.len().min(255) as u8];
        record.extend_from_slice(&payload[..payload.len().min(255)]);
        record
    })
}

fn stream(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    // Up to 24 packets: past the harness's reorder window (8), frame packets (16) and bytes
    // (1024) limits, so every limit is reached.
    proptest::collection::vec(packet_record(valid), 1..24).prop_map(|records| records.concat())
}

fn vp8_payloads() -> Vec<Vec<u8>> {
    let key = build::vp8_keyframe(640, 360, &[1, 2, 3]);
    vec![
        [&[0x10][..], &key].concat(),
        vec![0x90, 0xe0, 0x81, 0x23, 0x05, 0x40, 0x01, 0xaa],
        vec![0x00, 0x07, 0x08],
        vec![0x10, 0x01, 0xbb],
    ]
}

fn h264_payloads() -> Vec<Vec<u8>> {
    let sps = build::h264_sps(640, 368);
    vec![
        [&[0x78, 0x00, sps.len() as u8][..], &sps, &[0x00, 0x02, 0x68, 0xce]].concat(),
        vec![0x7c, 0x85, 0xaa, 0xbb],
        vec![0x7c, 0x05, 0xcc],
        vec![0x7c, 0x45, 0xdd],
        vec![0x65, 0x88, 0x84],
        vec![0x41, 0x9a, 0x01],
        build::h264_sps(16368, 16368),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn vp8_depacketizer_never_panics_and_refuses_with_an_error(
        data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::sample::select(vp8_payloads()).prop_flat_map(mutated),
        ]
    ) {
        fuzz::vp8_payload(&data);
    }

    #[test]
    fn h264_depacketizer_never_panics_and_output_stays_proportional(
        data in proptest::collection::vec(
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..32),
                proptest::sample::select(h264_payloads()).prop_flat_map(mutated),
            ].prop_map(|p| [&[p.len().min(255) as u8][..], &p[..p.len().min(255)]].concat()),
            1..16,
        ).prop_map(|v| v.concat())
    ) {
        fuzz::h264_payloads(&data);
    }

    #[test]
    fn vp8_assembler_stays_within_its_limits_whatever_arrives(data in stream(vp8_payloads())) {
        fuzz::assembler(PayloadFormat::Vp8, &data);
    }

    #[test]
    fn h264_assembler_stays_within_its_limits_whatever_arrives(data in stream(h264_payloads())) {
        fuzz::assembler(PayloadFormat::H264, &data);
    }

    #[test]
    fn frame_size_headers_never_panic_and_refuse_with_a_reason(data in header_bytes()) {
        fuzz::frame_headers(&data);
    }

    #[test]
    fn valid_sps_sizes_read_back_exactly(w in 1u32..1024, h in 1u32..1024, dw in 0u32..8, dh in 0u32..8) {
        // Crop as encoders do: an even number of pixels off the last macroblock.
        let (width, height) = (w * 16 - dw * 2 % 16, h * 16 - dh * 2 % 16);
        prop_assume!(width > 0 && height > 0);
        prop_assert_eq!(super::bitstream::h264_sps_size(&build::h264_sps(width, height)), Ok((width, height)));
    }
}
