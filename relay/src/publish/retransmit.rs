//! Answers to NACKs that cannot flood the path they are repairing.
//!
//! webrtc-rs's NACK responder resends every packet a NACK names, as often as it is named.
//! Receivers built on webrtc-rs (the project's `sora-endpoint`, and others) re-request every
//! missing packet every 100 ms without limit, so on a capped path each packet the cap drops is
//! sent again and again: measured, the retransmissions filled the cap on their own while it
//! lasted and burst at ~12 Mbit/s after it was lifted, which congestion control then read as
//! overuse and kept the encoder at its floor. Retransmissions are new bytes on a path that is
//! already losing, so this responder bounds them three ways:
//!
//! - **age**: a packet older than [`RetransmitPolicy::max_age`] is past any live receiver's
//!   playout; the receiver recovers with a keyframe request instead;
//! - **repetition**: a packet is resent at most [`RetransmitPolicy::max_resends`] times, and not
//!   again within [`RetransmitPolicy::min_resend_interval`] (a repeated request within about a
//!   round trip is the same loss asked for twice);
//! - **rate**: all retransmissions share a budget of [`RetransmitPolicy::budget_fraction`] of the
//!   path's current estimate, the headroom congestion control leaves below it.
//!
//! Retransmissions keep the original SSRC and sequence number (the relay negotiates no RTX) and
//! carry [`Attribute::Retransmission`], so the TWCC sender below numbers them and the estimator
//! counts them.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, AttributedPacket, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::sansio::Protocol;
use rtc::shared::TransportContext;
use rtc::shared::error::Error;

use super::congestion::BitrateEstimate;

/// How far retransmissions may go.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetransmitPolicy {
    /// Packets sent longer ago than this are not resent.
    pub max_age: Duration,
    /// Resends of one packet at most.
    pub max_resends: u8,
    /// Least time between two sends of one packet.
    pub min_resend_interval: Duration,
    /// Retransmissions may use this fraction of the path's estimate.
    pub budget_fraction: f64,
    /// The budget saves up for at most this long (the largest burst of retransmissions).
    pub budget_window: Duration,
    /// Packets of each stream kept for resending (a power of two).
    pub history: u16,
}

impl Default for RetransmitPolicy {
    /// Half a second of age (a live receiver has played out by then), two resends 100 ms apart
    /// (the NACK interval of common receivers), 15 % of the estimate (GCC backs off to 85 % of
    /// the received rate, so this fits under the path) saved up for half a second.
    fn default() -> Self {
        Self {
            max_age: Duration::from_millis(500),
            max_resends: 2,
            min_resend_interval: Duration::from_millis(100),
            budget_fraction: 0.15,
            budget_window: Duration::from_millis(500),
            history: 1024,
        }
    }
}

/// What became of the packets one NACK asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NackOutcome {
    /// Resent.
    pub resent: u32,
    /// Not in the history, too old, or resent often enough already.
    pub stale: u32,
    /// Asked for again within the resend interval.
    pub repeated: u32,
    /// Over the rate budget.
    pub over_budget: u32,
}

/// A token bucket of bits, filled at a rate given at each use.
#[derive(Clone, Debug, Default)]
struct Budget {
    bits: f64,
    last: Option<Instant>,
}

impl Budget {
    fn refill(&mut self, now: Instant, rate_bps: f64, window: Duration) {
        let capacity = rate_bps * window.as_secs_f64();
        let elapsed = self.last.map_or(window, |last| now.saturating_duration_since(last));
        self.bits = (self.bits + rate_bps * elapsed.as_secs_f64()).min(capacity);
        self.last = Some(now);
    }

    fn take(&mut self, bits: f64) -> bool {
        if self.bits < bits {
            return false;
        }
        self.bits -= bits;
        true
    }
}

struct Sent {
    packet: rtc::rtp::Packet,
    first: Instant,
    last: Instant,
    resends: u8,
}

/// The recent packets of one stream, by sequence number.
struct History {
    slots: Vec<Option<Sent>>,
    mask: u16,
}

impl History {
    fn new(size: u16) -> Self {
        let size = size.max(1).next_power_of_two();
        Self {
            slots: (0..size).map(|_| None).collect(),
            mask: size - 1,
        }
    }

    fn add(&mut self, now: Instant, packet: rtc::rtp::Packet) {
        let index = usize::from(packet.header.sequence_number & self.mask);
        self.slots[index] = Some(Sent {
            packet,
            first: now,
            last: now,
            resends: 0,
        });
    }

    fn get_mut(&mut self, seq: u16) -> Option<&mut Sent> {
        self.slots[usize::from(seq & self.mask)]
            .as_mut()
            .filter(|s| s.packet.header.sequence_number == seq)
    }
}

/// Decides which requested packets are resent. Pure: the caller passes the time and the
/// estimate.
pub struct Retransmitter {
    policy: RetransmitPolicy,
    streams: HashMap<u32, History>,
    budget: Budget,
}

impl Retransmitter {
    /// Nothing sent yet.
    pub fn new(policy: RetransmitPolicy) -> Self {
        Self {
            policy,
            streams: HashMap::new(),
            budget: Budget::default(),
        }
    }

    /// Keeps the packets of `ssrc` from now on.
    pub fn bind(&mut self, ssrc: u32) {
        self.streams.insert(ssrc, History::new(self.policy.history));
    }

    /// Forgets `ssrc`.
    pub fn unbind(&mut self, ssrc: u32) {
        self.streams.remove(&ssrc);
    }

    /// Remembers a packet sent at `now` (if its stream is bound).
    pub fn sent(&mut self, now: Instant, packet: &rtc::rtp::Packet) {
        if let Some(history) = self.streams.get_mut(&packet.header.ssrc) {
            history.add(now, packet.clone());
        }
    }

    /// The packets to resend for a request of `seqs` on `ssrc` at `now`, while the path's
    /// estimate is `estimate_bps`; in the order asked.
    pub fn requested(
        &mut self,
        now: Instant,
        ssrc: u32,
        seqs: impl IntoIterator<Item = u16>,
        estimate_bps: f64,
    ) -> (Vec<rtc::rtp::Packet>, NackOutcome) {
        let policy = self.policy;
        let mut outcome = NackOutcome::default();
        let mut resend = Vec::new();
        let Some(history) = self.streams.get_mut(&ssrc) else {
            return (resend, outcome);
        };
        self.budget.refill(
            now,
            estimate_bps.max(0.0) * policy.budget_fraction,
            policy.budget_window,
        );
        for seq in seqs {
            let Some(sent) = history.get_mut(seq) else {
                outcome.stale += 1;
                continue;
            };
            if now.saturating_duration_since(sent.first) > policy.max_age || sent.resends >= policy.max_resends {
                outcome.stale += 1;
            } else if sent.resends > 0 && now.saturating_duration_since(sent.last) < policy.min_resend_interval {
                outcome.repeated += 1;
            } else if !self.budget.take(wire_bits(&sent.packet)) {
                outcome.over_budget += 1;
            } else {
                sent.resends += 1;
                sent.last = now;
                outcome.resent += 1;
                resend.push(sent.packet.clone());
            }
        }
        (resend, outcome)
    }
}

/// A packet's size on the wire, roughly: header, payload and the UDP/IP/SRTP overhead.
fn wire_bits(packet: &rtc::rtp::Packet) -> f64 {
    const OVERHEAD_BYTES: usize = 12 + 8 + 20 + 10;
    ((packet.payload.len() + OVERHEAD_BYTES) * 8) as f64
}

/// Every sequence number a NACK names.
fn requested_seqs(nack: &TransportLayerNack) -> impl Iterator<Item = u16> + '_ {
    nack.nacks.iter().flat_map(|pair| pair.packet_list())
}

/// The interceptor in webrtc-rs's NACK responder slot: buffers what is sent, answers NACKs
/// through a [`Retransmitter`] whose budget follows the peer's [`BitrateEstimate`].
pub struct BoundedNackResponder {
    retransmitter: Retransmitter,
    estimate: BitrateEstimate,
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl BoundedNackResponder {
    /// Answers within `policy`, budgeting against `estimate`.
    pub fn new(policy: RetransmitPolicy, estimate: BitrateEstimate) -> Self {
        Self {
            retransmitter: Retransmitter::new(policy),
            estimate,
            read_queue: VecDeque::new(),
            write_queue: VecDeque::new(),
        }
    }

    fn answer(&mut self, now: Instant, nack: &TransportLayerNack) {
        // No estimate (not connected yet, or just closed): nothing to budget against.
        let estimate = self.estimate.get().unwrap_or(0.0);
        let (packets, outcome) = self
            .retransmitter
            .requested(now, nack.media_ssrc, requested_seqs(nack), estimate);
        if outcome != NackOutcome::default() {
            tracing::trace!(ssrc = nack.media_ssrc, ?outcome, "NACK answered");
        }
        for packet in packets {
            self.write_queue.push_back(TaggedPacket {
                now,
                transport: TransportContext::default(),
                message: AttributedPacket::new(Packet::Rtp(packet)).with(Attribute::Retransmission),
            });
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for BoundedNackResponder {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            for nack in packets
                .iter()
                .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
            {
                self.answer(msg.now, nack);
            }
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(packet) = &msg.message.packet {
            self.retransmitter.sent(msg.now, packet);
        }
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for BoundedNackResponder {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if info
            .rtcp_feedback
            .iter()
            .any(|fb| fb.typ == "nack" && fb.parameter.is_empty())
        {
            self.retransmitter.bind(info.ssrc);
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.retransmitter.unbind(info.ssrc);
    }

    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}

    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SSRC: u32 = 7;
    /// 1000 payload bytes: 8400 bits on the wire.
    const PACKET_BITS: f64 = 8400.0;

    fn packet(seq: u16) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                ssrc: SSRC,
                sequence_number: seq,
                ..Default::default()
            },
            payload: vec![0u8; 1000].into(),
        }
    }

    /// A retransmitter that sent packets 0..n at t0, with a generous budget.
    fn sent(n: u16, policy: RetransmitPolicy) -> (Retransmitter, Instant) {
        let t0 = Instant::now();
        let mut r = Retransmitter::new(policy);
        r.bind(SSRC);
        for seq in 0..n {
            r.sent(t0, &packet(seq));
        }
        (r, t0)
    }

    fn seqs(packets: &[rtc::rtp::Packet]) -> Vec<u16> {
        packets.iter().map(|p| p.header.sequence_number).collect()
    }

    const PLENTY_BPS: f64 = 100_000_000.0;

    #[test]
    fn a_requested_packet_is_resent_once_per_interval() {
        let (mut r, t0) = sent(10, RetransmitPolicy::default());

        let (first, _) = r.requested(t0 + 20 * MS, SSRC, [3, 4], PLENTY_BPS);
        let (again, outcome) = r.requested(t0 + 60 * MS, SSRC, [3], PLENTY_BPS);
        let (later, _) = r.requested(t0 + 130 * MS, SSRC, [3], PLENTY_BPS);

        assert_eq!(seqs(&first), [3, 4]);
        assert!(again.is_empty());
        assert_eq!(outcome.repeated, 1);
        assert_eq!(seqs(&later), [3]);
    }

    #[test]
    fn a_packet_is_resent_at_most_max_resends_times() {
        let (mut r, t0) = sent(10, RetransmitPolicy::default());

        let resent: usize = (1..6)
            .map(|i| r.requested(t0 + i * 100 * MS, SSRC, [5], PLENTY_BPS).0.len())
            .sum();

        assert_eq!(resent, 2);
    }

    #[test]
    fn packets_older_than_max_age_are_not_resent() {
        let (mut r, t0) = sent(10, RetransmitPolicy::default());

        let (packets, outcome) = r.requested(t0 + 501 * MS, SSRC, [1, 2], PLENTY_BPS);

        assert!(packets.is_empty());
        assert_eq!(outcome.stale, 2);
    }

    #[test]
    fn unknown_streams_and_packets_are_ignored() {
        let (mut r, t0) = sent(10, RetransmitPolicy::default());

        assert!(r.requested(t0, SSRC + 1, [1], PLENTY_BPS).0.is_empty());
        let (packets, outcome) = r.requested(t0, SSRC, [500], PLENTY_BPS);
        assert!(packets.is_empty());
        assert_eq!(outcome.stale, 1);
    }

    #[test]
    fn retransmissions_stay_within_a_fraction_of_the_estimate() {
        // 1 Mbit/s at 15 % over a 500 ms window: 75 kbit saved up, then 150 kbit/s.
        let policy = RetransmitPolicy {
            max_age: Duration::from_secs(10),
            ..RetransmitPolicy::default()
        };
        let (mut r, t0) = sent(1000, policy);
        let estimate = 1_000_000.0;

        let (burst, outcome) = r.requested(t0, SSRC, 0..100, estimate);
        assert_eq!(burst.len(), (75_000.0 / PACKET_BITS) as usize);
        assert!(outcome.over_budget > 80);

        // Over the next second, asked for far more than the budget allows.
        let mut resent = 0;
        for step in 1..=10u16 {
            let at = t0 + u32::from(step) * 100 * MS;
            let from = 100 + step * 50;
            resent += r.requested(at, SSRC, from..from + 50, estimate).0.len();
        }
        let expected = 150_000.0 / PACKET_BITS;
        assert!((resent as f64 - expected).abs() <= 2.0, "{resent} vs {expected}");
    }

    #[test]
    fn without_an_estimate_nothing_is_resent() {
        let (mut r, t0) = sent(10, RetransmitPolicy::default());

        assert!(r.requested(t0, SSRC, [1], 0.0).0.is_empty());
    }
}
