//! RTP packets -> complete encoded frames, with reordering, loss and keyframe detection.
//!
//! Sans-IO: the caller passes each packet with its arrival time and gets back the frames it
//! completed. Packets are processed in sequence-number order; a gap is waited for (a NACK
//! retransmission may fill it) up to a bounded number of packets or time, then declared lost.
//! A frame is emitted only when all its packets arrived, it began with a frame-start packet and
//! ended with the marker bit (or at the next timestamp after contiguous packets). Anything else
//! is dropped and the next emitted frame carries `discontinuity = true`, so the decoder side
//! knows the reference chain is broken and can wait for a keyframe.
//!
//! Memory is bounded whatever arrives: at most `max_reorder_packets` packets wait, and a frame
//! growing past `max_frame_bytes` or `max_frame_packets` is dropped (its data freed at once and
//! the rest of its packets discarded) and counted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::depacketize::{H264Depacketizer, PayloadFormat, PayloadInfo, depacketize_vp8};

/// A sequence-number jump larger than this (either way) is a restarted stream, not loss.
const RESET_DISTANCE: u64 = 3000;

/// One RTP packet as the assembler needs it.
#[derive(Clone, Debug)]
pub struct RtpInput {
    /// RTP sequence number.
    pub sequence_number: u16,
    /// RTP timestamp (90 kHz for video).
    pub timestamp: u32,
    /// Marker bit: last packet of a frame.
    pub marker: bool,
    /// Payload, padding already removed.
    pub payload: Bytes,
    /// When the packet arrived.
    pub arrival: Instant,
}

impl RtpInput {
    /// Takes the fields the assembler needs from a parsed RTP packet.
    pub fn from_packet(packet: &rtc::rtp::Packet, arrival: Instant) -> Self {
        Self {
            sequence_number: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            marker: packet.header.marker,
            payload: packet.payload.clone(),
            arrival,
        }
    }
}

/// How long a sequence gap is waited for, and how large a frame may grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// Declare the gap lost once this many later packets are waiting.
    pub max_reorder_packets: usize,
    /// Declare the gap lost once the first packet after it has waited this long.
    pub max_reorder_delay: Duration,
    /// A frame whose bitstream grows beyond this many bytes is dropped.
    pub max_frame_bytes: usize,
    /// A frame spanning more than this many RTP packets is dropped.
    pub max_frame_packets: u32,
}

impl Default for AssemblerConfig {
    fn default() -> Self {
        Self {
            max_reorder_packets: 256,
            max_reorder_delay: Duration::from_millis(100),
            // A 1080p key frame at 8 Mbit/s is ~250 kB; four times that is no camera's.
            max_frame_bytes: 1 << 20,
            // 1 MiB in ~1200-byte packets.
            max_frame_packets: 1024,
        }
    }
}

/// One complete encoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssembledFrame {
    /// The bitstream: a VP8 frame, or an H.264 access unit in Annex-B form.
    pub data: Vec<u8>,
    /// RTP timestamp shared by the frame's packets.
    pub rtp_timestamp: u32,
    /// Whether the payload marks it as a keyframe (VP8 key frame, H.264 IDR).
    pub keyframe: bool,
    /// Arrival of the frame's first packet.
    pub first_arrival: Instant,
    /// Arrival of the frame's last packet.
    pub last_arrival: Instant,
    /// Number of RTP packets in the frame.
    pub packets: u32,
    /// Packets or frames were lost or dropped since the previous emitted frame.
    pub discontinuity: bool,
}

/// Counters kept by the assembler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AssemblerStats {
    /// Packets pushed.
    pub packets: u64,
    /// Packets with an empty payload (padding), skipped.
    pub padding_packets: u64,
    /// Packets seen twice, or arriving after their gap was declared lost.
    pub late_or_duplicate_packets: u64,
    /// Packets that arrived before a packet with a lower sequence number.
    pub reordered_packets: u64,
    /// Sequence numbers never received (gaps declared lost).
    pub lost_packets: u64,
    /// Payloads that could not be depacketized.
    pub malformed_packets: u64,
    /// Frames emitted.
    pub frames: u64,
    /// Frames started but not emitted (incomplete, malformed, or joined mid-frame).
    pub dropped_frames: u64,
    /// Sequence-number jumps treated as a restarted stream.
    pub stream_resets: u64,
    /// Frames dropped for growing beyond `max_frame_bytes` (also in `dropped_frames`).
    pub oversized_bytes: u64,
    /// Frames dropped for spanning more than `max_frame_packets` (also in `dropped_frames`).
    pub oversized_packets: u64,
}

/// Which frame limit a frame broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Oversize {
    Bytes,
    Packets,
}

#[derive(Debug)]
struct Partial {
    timestamp: u32,
    data: Vec<u8>,
    broken: bool,
    oversize: Option<Oversize>,
    keyframe: bool,
    first_arrival: Instant,
    last_arrival: Instant,
    packets: u32,
}

/// Turns a stream of RTP packets of one SSRC into complete frames.
#[derive(Debug)]
pub struct FrameAssembler {
    format: PayloadFormat,
    config: AssemblerConfig,
    h264: H264Depacketizer,
    pending: BTreeMap<u64, RtpInput>,
    next: Option<u64>,
    highest: Option<u64>,
    current: Option<Partial>,
    discontinuity: bool,
    stats: AssemblerStats,
}

impl FrameAssembler {
    /// A new assembler for one payload format.
    pub fn new(format: PayloadFormat, config: AssemblerConfig) -> Self {
        Self {
            format,
            config,
            h264: H264Depacketizer::default(),
            pending: BTreeMap::new(),
            next: None,
            highest: None,
            current: None,
            discontinuity: false,
            stats: AssemblerStats::default(),
        }
    }

    /// The payload format this assembler reads.
    pub fn format(&self) -> PayloadFormat {
        self.format
    }

    /// Counters so far.
    pub fn stats(&self) -> AssemblerStats {
        self.stats
    }

    /// Bytes held now: payloads waiting for a gap, and the frame being assembled.
    pub fn buffered_bytes(&self) -> usize {
        let waiting: usize = self.pending.values().map(|p| p.payload.len()).sum();
        waiting + self.current.as_ref().map_or(0, |c| c.data.capacity())
    }

    /// Packets waiting for a sequence gap to fill.
    pub fn waiting_packets(&self) -> usize {
        self.pending.len()
    }

    /// Adds one packet; returns the frames it completed, oldest first.
    pub fn push(&mut self, packet: RtpInput) -> Vec<AssembledFrame> {
        let mut out = Vec::new();
        self.stats.packets += 1;
        let now = packet.arrival;
        let ext = self.extend(packet.sequence_number);
        let (next, highest) = match (self.next, self.highest) {
            (Some(next), Some(highest)) => (next, highest),
            _ => {
                self.next = Some(ext);
                self.highest = Some(ext);
                self.pending.insert(ext, packet);
                self.drain(now, &mut out);
                return out;
            }
        };
        if ext + RESET_DISTANCE < next || ext > highest + RESET_DISTANCE {
            self.stats.stream_resets += 1;
            self.pending.clear();
            if self.current.take().is_some() {
                self.stats.dropped_frames += 1;
            }
            self.h264.reset();
            self.discontinuity = true;
            self.next = Some(ext);
            self.highest = Some(ext);
        } else if ext < next || self.pending.contains_key(&ext) {
            self.stats.late_or_duplicate_packets += 1;
            return out;
        } else if ext < highest {
            self.stats.reordered_packets += 1;
        } else {
            self.highest = Some(ext);
        }
        self.pending.insert(ext, packet);
        self.drain(now, &mut out);
        out
    }

    /// Gives up on a gap that has waited too long even when no new packet arrives.
    pub fn flush(&mut self, now: Instant) -> Vec<AssembledFrame> {
        let mut out = Vec::new();
        self.drain(now, &mut out);
        out
    }

    /// Maps a 16-bit sequence number onto a monotonic 64-bit one near the highest seen.
    fn extend(&self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            // Start one cycle up so that slightly older packets do not underflow.
            return (1 << 16) | u64::from(seq);
        };
        let base = (highest & !0xffff) | u64::from(seq);
        [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
            .into_iter()
            .filter(|c| *c < (1 << 63))
            .min_by_key(|c| c.abs_diff(highest))
            .unwrap_or(base)
    }

    fn drain(&mut self, now: Instant, out: &mut Vec<AssembledFrame>) {
        let Some(mut next) = self.next else { return };
        loop {
            while let Some(packet) = self.pending.remove(&next) {
                self.process(packet, out);
                next += 1;
            }
            let Some((&first, waiting)) = self.pending.first_key_value() else {
                break;
            };
            let waited = now.saturating_duration_since(waiting.arrival);
            if self.pending.len() > self.config.max_reorder_packets || waited >= self.config.max_reorder_delay {
                self.stats.lost_packets += first - next;
                self.break_current();
                next = first;
            } else {
                break;
            }
        }
        self.next = Some(next);
    }

    /// Marks the frame in progress as unusable (its later packets still join it, so it is
    /// dropped and counted once) and the stream as discontinuous.
    fn break_current(&mut self) {
        if let Some(partial) = self.current.as_mut() {
            partial.broken = true;
        }
        self.discontinuity = true;
    }

    fn process(&mut self, packet: RtpInput, out: &mut Vec<AssembledFrame>) {
        if packet.payload.is_empty() {
            self.stats.padding_packets += 1;
            return;
        }
        if self.current.as_ref().is_some_and(|c| c.timestamp != packet.timestamp) {
            // The previous frame never saw its marker bit. Its packets were contiguous, so it is
            // complete unless something else was wrong with it.
            self.finish(out);
        }
        let partial = self.current.get_or_insert_with(|| Partial {
            timestamp: packet.timestamp,
            data: Vec::with_capacity(packet.payload.len().min(self.config.max_frame_bytes)),
            broken: false,
            oversize: None,
            keyframe: false,
            first_arrival: packet.arrival,
            last_arrival: packet.arrival,
            packets: 0,
        });
        if partial.packets == 0 {
            self.h264.reset();
        }
        let result = if partial.broken {
            // Nothing will be emitted from this frame; parsing on would only report noise.
            Ok(PayloadInfo {
                frame_start: true,
                ..PayloadInfo::default()
            })
        } else {
            match self.format {
                PayloadFormat::Vp8 => depacketize_vp8(&packet.payload, &mut partial.data),
                PayloadFormat::H264 => self.h264.depacketize(&packet.payload, &mut partial.data),
            }
        };
        match result {
            Ok(PayloadInfo { frame_start, keyframe }) => {
                if partial.packets == 0 && !frame_start {
                    partial.broken = true;
                }
                partial.keyframe |= keyframe;
            }
            Err(_) => {
                self.stats.malformed_packets += 1;
                partial.broken = true;
            }
        }
        partial.packets = partial.packets.saturating_add(1);
        partial.last_arrival = packet.arrival;
        let oversize = if partial.data.len() > self.config.max_frame_bytes {
            Some(Oversize::Bytes)
        } else if partial.packets > self.config.max_frame_packets {
            Some(Oversize::Packets)
        } else {
            None
        };
        if oversize.is_some() && partial.oversize.is_none() {
            partial.oversize = oversize;
            partial.broken = true;
            // Free it now: the rest of the frame's packets are discarded unread.
            partial.data = Vec::new();
        }
        if packet.marker {
            self.finish(out);
        }
    }

    fn finish(&mut self, out: &mut Vec<AssembledFrame>) {
        let Some(partial) = self.current.take() else {
            return;
        };
        let fragment_open = self.h264.fragment_open();
        self.h264.reset();
        if partial.broken || fragment_open || partial.data.is_empty() {
            self.stats.dropped_frames += 1;
            match partial.oversize {
                Some(Oversize::Bytes) => self.stats.oversized_bytes += 1,
                Some(Oversize::Packets) => self.stats.oversized_packets += 1,
                None => {}
            }
            self.discontinuity = true;
            return;
        }
        self.stats.frames += 1;
        out.push(AssembledFrame {
            data: partial.data,
            rtp_timestamp: partial.timestamp,
            keyframe: partial.keyframe,
            first_arrival: partial.first_arrival,
            last_arrival: partial.last_arrival,
            packets: partial.packets,
            discontinuity: std::mem::take(&mut self.discontinuity),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Clock(Instant);

    impl Clock {
        fn at(&self, ms: u64) -> Instant {
            self.0 + Duration::from_millis(ms)
        }
    }

    fn pkt(clock: &Clock, ms: u64, seq: u16, ts: u32, marker: bool, payload: &[u8]) -> RtpInput {
        RtpInput {
            sequence_number: seq,
            timestamp: ts,
            marker,
            payload: Bytes::copy_from_slice(payload),
            arrival: clock.at(ms),
        }
    }

    /// VP8 packets of one frame: a start packet (keyframe or not) and continuations.
    fn vp8_frame(clock: &Clock, ms: u64, first_seq: u16, ts: u32, key: bool, parts: usize) -> Vec<RtpInput> {
        (0..parts)
            .map(|i| {
                let seq = first_seq.wrapping_add(i as u16);
                let last = i + 1 == parts;
                let payload: Vec<u8> = if i == 0 {
                    vec![0x10, if key { 0x00 } else { 0x01 }, i as u8]
                } else {
                    vec![0x00, 0xa0 + i as u8]
                };
                pkt(clock, ms, seq, ts, last, &payload)
            })
            .collect()
    }

    fn push_all(a: &mut FrameAssembler, packets: Vec<RtpInput>) -> Vec<AssembledFrame> {
        packets.into_iter().flat_map(|p| a.push(p)).collect()
    }

    #[test]
    fn in_order_frames_are_emitted_on_the_marker_bit() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        let mut packets = vp8_frame(&c, 0, 100, 3000, true, 3);
        packets.extend(vp8_frame(&c, 33, 103, 6000, false, 2));
        let frames = push_all(&mut a, packets);
        assert_eq!(frames.len(), 2);
        assert!(frames[0].keyframe && !frames[1].keyframe);
        assert_eq!(frames[0].data, [0x00, 0x00, 0xa1, 0xa2]);
        assert_eq!(frames[0].packets, 3);
        assert_eq!(frames[1].rtp_timestamp, 6000);
        assert!(!frames[0].discontinuity && !frames[1].discontinuity);
        assert_eq!(frames[1].first_arrival, c.at(33));
        assert_eq!(a.stats().frames, 2);
    }

    #[test]
    fn reordered_packets_are_put_back_in_order() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        let mut packets = vp8_frame(&c, 0, 10, 90, true, 3);
        packets.swap(1, 2);
        let frames = push_all(&mut a, packets);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].data, [0x00, 0x00, 0xa1, 0xa2]);
        assert_eq!(a.stats().reordered_packets, 1);
        assert!(!frames[0].discontinuity);
    }

    #[test]
    fn sequence_numbers_wrap_around() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        let mut packets = vp8_frame(&c, 0, 65534, 1000, true, 3);
        packets.extend(vp8_frame(&c, 0, 1, 4000, false, 1));
        let frames = push_all(&mut a, packets);
        assert_eq!(frames.len(), 2);
        assert_eq!(a.stats().lost_packets, 0);
    }

    #[test]
    fn a_lost_packet_drops_its_frame_and_flags_the_next() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        let mut first = vp8_frame(&c, 0, 0, 100, true, 3);
        first.remove(1); // seq 1 never arrives
        assert!(push_all(&mut a, first).is_empty());
        // 150 ms later the next frame arrives: the gap is older than max_reorder_delay.
        let frames = push_all(&mut a, vp8_frame(&c, 150, 3, 200, false, 2));
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].rtp_timestamp, 200);
        assert!(frames[0].discontinuity);
        let stats = a.stats();
        assert_eq!((stats.lost_packets, stats.dropped_frames, stats.frames), (1, 1, 1));
    }

    #[test]
    fn a_late_retransmission_fills_the_gap_in_time() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        let mut packets = vp8_frame(&c, 0, 0, 100, true, 3);
        let missing = packets.remove(1);
        assert!(push_all(&mut a, packets).is_empty());
        let frames = a.push(RtpInput {
            arrival: c.at(20),
            ..missing
        });
        assert_eq!(frames.len(), 1);
        assert!(!frames[0].discontinuity);
        // The same packet again is a duplicate.
        assert!(a.push(pkt(&c, 30, 1, 100, false, &[0x00, 0x01])).is_empty());
        assert_eq!(a.stats().late_or_duplicate_packets, 1);
    }

    #[test]
    fn flush_declares_a_stalled_gap_lost() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        // Frame 1 complete; frame 2 misses its first packet, frame 3 complete behind it.
        let f1 = vp8_frame(&c, 0, 0, 100, true, 1);
        let mut f2 = vp8_frame(&c, 5, 1, 200, false, 2);
        f2.remove(0);
        let f3 = vp8_frame(&c, 10, 3, 300, false, 1);
        let frames = push_all(&mut a, [f1, f2, f3].concat());
        assert_eq!(frames.len(), 1);
        assert!(a.flush(c.at(50)).is_empty());
        let frames = a.flush(c.at(200));
        // Frame 2 starts with a continuation packet: dropped. Frame 3 is emitted, flagged.
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].rtp_timestamp, 300);
        assert!(frames[0].discontinuity);
    }

    #[test]
    fn joining_mid_frame_drops_the_partial_frame() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        let mut packets = vp8_frame(&c, 0, 50, 100, true, 3);
        packets.remove(0);
        packets.extend(vp8_frame(&c, 0, 53, 200, false, 1));
        let frames = push_all(&mut a, packets);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].rtp_timestamp, 200);
        assert!(frames[0].discontinuity);
    }

    #[test]
    fn a_frame_without_marker_is_completed_by_the_next_timestamp() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        let frames = push_all(
            &mut a,
            vec![
                pkt(&c, 0, 7, 100, false, &[0x10, 0x00, 0x01]),
                pkt(&c, 1, 8, 200, true, &[0x10, 0x01, 0x02]),
            ],
        );
        assert_eq!(frames.iter().map(|f| f.rtp_timestamp).collect::<Vec<_>>(), [100, 200]);
    }

    #[test]
    fn padding_packets_consume_sequence_numbers_without_loss() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        let mut packets = vp8_frame(&c, 0, 0, 100, true, 1);
        packets.push(pkt(&c, 1, 1, 100, false, &[]));
        packets.extend(vp8_frame(&c, 2, 2, 200, false, 1));
        let frames = push_all(&mut a, packets);
        assert_eq!(frames.len(), 2);
        assert!(!frames[1].discontinuity);
        assert_eq!(a.stats().padding_packets, 1);
    }

    #[test]
    fn a_large_jump_resets_the_stream() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::Vp8, AssemblerConfig::default());
        push_all(&mut a, vp8_frame(&c, 0, 40000, 100, true, 1));
        let frames = push_all(&mut a, vp8_frame(&c, 1, 10, 200, true, 1));
        assert_eq!(frames.len(), 1);
        assert!(frames[0].discontinuity);
        assert_eq!(a.stats().stream_resets, 1);
    }

    #[test]
    fn h264_access_unit_with_stap_a_and_fu_a() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::H264, AssemblerConfig::default());
        let packets = vec![
            pkt(&c, 0, 1, 100, false, &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x01, 0x68]),
            pkt(&c, 0, 2, 100, false, &[0x7c, 0x85, 0xaa]),
            pkt(&c, 0, 3, 100, true, &[0x7c, 0x45, 0xbb]),
            pkt(&c, 0, 4, 200, true, &[0x41, 0x9a]),
        ];
        let frames = push_all(&mut a, packets);
        assert_eq!(frames.len(), 2);
        assert!(frames[0].keyframe);
        assert_eq!(
            frames[0].data,
            [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0, 0, 0, 1, 0x65, 0xaa, 0xbb]
        );
        assert!(!frames[1].keyframe);
        assert_eq!(frames[1].data, [0, 0, 0, 1, 0x41, 0x9a]);
    }

    #[test]
    fn h264_frame_ending_inside_a_fragment_is_dropped() {
        let c = Clock(Instant::now());
        let mut a = FrameAssembler::new(PayloadFormat::H264, AssemblerConfig::default());
        let frames = push_all(&mut a, vec![pkt(&c, 0, 1, 100, true, &[0x7c, 0x85, 0xaa])]);
        assert!(frames.is_empty());
        assert_eq!(a.stats().dropped_frames, 1);
    }
}
