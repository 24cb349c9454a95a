//! Congestion control of the relay's outputs: each send peer estimates its path's capacity from
//! the receiver's feedback, and the one shared encoder follows the estimates of the outputs that
//! matter for the product.
//!
//! The estimating is webrtc-rs's own: the TWCC sender numbers every packet, the receiver (Sora,
//! a WHIP server, a browser) reports arrivals in transport-wide feedback, and the congestion
//! control interceptor hands them to Google Congestion Control (`Gcc`: a delay-gradient half
//! and a loss half, the lower wins). webrtc-rs's pacer is deliberately not used: its queue sits
//! inside the chain where nothing can see or bound it in time, and with an estimate that falls
//! faster than the encoder it held seconds of packets (measured: the stream stopped decoding);
//! the encoder's rate is the pacing. This module adds what webrtc-rs leaves to the
//! application: getting the estimate out of the chain ([`ReportingEstimator`]) and deciding
//! when the encoder's bitrate follows it ([`EncoderRate`]).
//!
//! How several receivers combine: there is one encoder, so there is one bitrate. It follows
//! the *lowest* estimate among the outputs that drive it — the Sora and WHIP publishers, where
//! the audience is — so the stream fits the narrowest of those paths instead of queueing or
//! losing on it. Preview viewers never drive it: a viewer on a slow path would otherwise lower
//! the picture for everyone. Such a viewer loses frames at its own bounded buffer and pacer
//! queue instead. With no driving output connected the encoder holds its rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::Gauge;
use rtc::interceptor::{
    BandwidthEstimator, CongestionControlBuilder, EstimatorStats, Gcc, PacketReport, RateCalculator, Registry, Slot,
    TwccSenderBuilder,
};

/// The bitrate range congestion control keeps an output within, in bit/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BitrateLimits {
    /// Never below this (a floor where the picture is still worth watching).
    pub min_bps: f64,
    /// Where a new connection starts (the configured `bitrate_kbps`).
    pub start_bps: f64,
    /// Never above this.
    pub max_bps: f64,
}

impl Default for BitrateLimits {
    /// Fixed at 1000 kbit/s, the default `video.bitrate_kbps`.
    fn default() -> Self {
        Self::fixed_kbps(1000)
    }
}

impl BitrateLimits {
    /// Limits from kbit/s settings; `start` is clamped into `min..=max`.
    pub fn from_kbps(min: u32, start: u32, max: u32) -> Self {
        let (min_bps, max_bps) = (f64::from(min) * 1000.0, f64::from(max.max(min)) * 1000.0);
        Self {
            min_bps,
            start_bps: (f64::from(start) * 1000.0).clamp(min_bps, max_bps),
            max_bps,
        }
    }

    /// A fixed rate (congestion control only observes).
    pub fn fixed_kbps(kbps: u32) -> Self {
        Self::from_kbps(kbps, kbps, kbps)
    }
}

/// One output's current estimate of its path, in bit/s; zero while it has none (not
/// connected). Written by the peer's estimator, read by the encoder and exported as a gauge.
/// A cap the remote side asked for (`b=TIAS` / `b=AS` in its SDP) bounds it, as libwebrtc
/// bounds its own.
#[derive(Clone, Debug, Default)]
pub struct BitrateEstimate {
    bits: Arc<AtomicU64>,
    cap: Arc<AtomicU64>,
    gauge: Option<Gauge>,
}

impl BitrateEstimate {
    /// An estimate exported on `gauge` as well.
    pub fn exported(gauge: Gauge) -> Self {
        Self {
            gauge: Some(gauge),
            ..Self::default()
        }
    }

    /// Records a new estimate.
    pub fn set(&self, bps: f64) {
        self.bits.store(bps.max(0.0).to_bits(), Ordering::Relaxed);
        self.export();
    }

    /// The remote side's cap in bit/s (`None`: it set none).
    pub fn set_cap(&self, bps: Option<f64>) {
        let bps = bps.filter(|b| b.is_finite() && *b > 0.0).unwrap_or(0.0);
        self.cap.store(bps.to_bits(), Ordering::Relaxed);
        self.export();
    }

    fn export(&self) {
        if let Some(g) = &self.gauge {
            g.set(self.get().unwrap_or(0.0));
        }
    }

    /// The output has no path now (closed, reconnecting).
    pub fn clear(&self) {
        self.set(0.0);
    }

    /// The estimate in bit/s, within the remote side's cap, if there is one.
    pub fn get(&self) -> Option<f64> {
        let bps = f64::from_bits(self.bits.load(Ordering::Relaxed));
        let cap = f64::from_bits(self.cap.load(Ordering::Relaxed));
        let bps = if cap > 0.0 { bps.min(cap) } else { bps };
        (bps > 0.0).then_some(bps)
    }
}

/// The video bitrate cap a remote SDP sets, in bit/s: `b=TIAS` (bit/s) or else `b=AS` (kbit/s)
/// in the first video media section, as libwebrtc reads them. `None` without one (or with a
/// value that is not a positive number).
pub fn remote_video_cap_bps(sdp: &str) -> Option<f64> {
    let mut in_video = false;
    let (mut tias, mut as_kbps) = (None, None);
    for line in sdp.lines().map(str::trim_end) {
        if let Some(media) = line.strip_prefix("m=") {
            if in_video {
                break;
            }
            in_video = media.starts_with("video ");
            continue;
        }
        if !in_video {
            continue;
        }
        let number = |v: &str| v.trim().parse::<u64>().ok().filter(|&n| n > 0);
        if let Some(v) = line.strip_prefix("b=TIAS:") {
            tias = number(v).map(|n| n as f64);
        } else if let Some(v) = line.strip_prefix("b=AS:") {
            as_kbps = number(v).map(|n| n as f64 * 1000.0);
        }
    }
    tias.or(as_kbps)
}

/// Wraps the estimator the congestion control interceptor drives and publishes its target to a
/// [`BitrateEstimate`] after every update (the interceptor keeps the estimator out of reach).
pub struct ReportingEstimator<E> {
    inner: E,
    estimate: BitrateEstimate,
}

impl<E: BandwidthEstimator> ReportingEstimator<E> {
    /// Starts publishing `inner`'s target to `estimate` at once.
    pub fn new(inner: E, estimate: BitrateEstimate) -> Self {
        estimate.set(inner.target_bitrate());
        Self { inner, estimate }
    }

    fn publish(&self) {
        self.estimate.set(self.inner.target_bitrate());
    }
}

impl<E: BandwidthEstimator> BandwidthEstimator for ReportingEstimator<E> {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        self.inner.on_reports(now, reports);
        self.publish();
    }

    fn target_bitrate(&self) -> f64 {
        self.inner.target_bitrate()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
        self.publish();
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.inner.stats()
    }
}

/// Never lets the estimate fall below this fraction of what the path delivered in the last
/// [`DELIVERED_WINDOW`] (GCC's own back-off factor from the received rate).
pub const DELIVERED_FLOOR: f64 = 0.85;
/// Over how long the delivered rate is measured.
pub const DELIVERED_WINDOW: Duration = Duration::from_secs(1);
/// The estimate may climb to at most this multiple of the delivered rate (plus
/// [`DELIVERED_HEADROOM_BPS`]), as libwebrtc bounds its increases by the acknowledged rate.
pub const DELIVERED_CEILING: f64 = 1.5;
/// See [`DELIVERED_CEILING`].
pub const DELIVERED_HEADROOM_BPS: f64 = 10_000.0;

/// Keeps an estimator's target at least [`DELIVERED_FLOOR`] of the rate the receiver reports as
/// delivered. webrtc-rs's GCC lowers its loss half by `1 - loss/2` every 200 ms while its
/// smoothed loss is above 10 %, and that average lags the encoder: on a path capped below the
/// encoder the loss half fell from 1500 to the 150 kbit/s floor in about a second while the
/// path kept delivering 600 (measured), and climbing back from the floor takes many seconds.
/// Whatever the loss, a path that just delivered `R` carries about `R`; below `0.85 R` the
/// loss is not the path's, and the estimate has nothing left to learn there.
///
/// It also keeps the estimate from climbing past [`DELIVERED_CEILING`] times the delivered
/// rate (it never lowers it for that). Sending less than the estimate (simulcast with a layer
/// suspended) contradicts nothing, and webrtc-rs's GCC, which does not probe, then drifted up
/// unchecked: 1436 kbit/s on a 600 kbit/s path that delivered 583 (measured), which brought the
/// suspended layer back onto a path that could not carry it.
pub struct DeliveredBounds<E> {
    inner: E,
    delivered: RateCalculator,
    floor_bps: f64,
    ceiling_bps: f64,
    last_bps: f64,
    max_bps: f64,
}

impl<E: BandwidthEstimator> DeliveredBounds<E> {
    /// Bounds `inner`'s target; never above `max_bps`.
    pub fn new(inner: E, max_bps: f64) -> Self {
        let last_bps = inner.target_bitrate();
        Self {
            inner,
            delivered: RateCalculator::new(DELIVERED_WINDOW),
            floor_bps: 0.0,
            ceiling_bps: f64::INFINITY,
            last_bps,
            max_bps,
        }
    }
}

impl<E: BandwidthEstimator> BandwidthEstimator for DeliveredBounds<E> {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        for report in reports.iter().filter(|r| r.arrived) {
            self.delivered.add(now, report.size);
        }
        let delivered = self.delivered.rate_bits_per_second(now);
        self.floor_bps = delivered.map_or(0.0, |r| r * DELIVERED_FLOOR);
        self.ceiling_bps = delivered.map_or(f64::INFINITY, |r| {
            (r * DELIVERED_CEILING + DELIVERED_HEADROOM_BPS).max(self.last_bps)
        });
        self.inner.on_reports(now, reports);
        self.last_bps = self.target_bitrate();
    }

    fn target_bitrate(&self) -> f64 {
        self.inner
            .target_bitrate()
            .min(self.ceiling_bps)
            .max(self.floor_bps.min(self.max_bps))
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.inner.stats()
    }
}

/// Adds send-side congestion control to a registry that already has webrtc-rs's defaults
/// (which register the `transport-cc` header extension and feedback, so the remote reports):
/// TWCC numbering and the send history driving GCC.
pub fn with_congestion_control(registry: Registry, limits: BitrateLimits, estimate: BitrateEstimate) -> Registry {
    let gcc = Gcc::new(limits.start_bps, limits.min_bps, limits.max_bps);
    registry.with(Slot::TwccSender, TwccSenderBuilder::new().build()).with(
        Slot::CongestionControl,
        CongestionControlBuilder::new(ReportingEstimator::new(
            DeliveredBounds::new(gcc, limits.max_bps),
            estimate,
        ))
        .build(),
    )
}

/// A decrease smaller than this fraction is not worth a change of the encoder's settings.
const DECREASE_DEADBAND: f64 = 0.05;
/// An increase smaller than this fraction is not worth one either.
const INCREASE_DEADBAND: f64 = 0.05;
/// Least time between two decreases: a falling estimate is followed within a few frames.
const DECREASE_INTERVAL: Duration = Duration::from_millis(200);
/// Least time after any change before an increase: ramps are stepped (an H.264 encoder
/// re-initialises on every change, so changes must stay rare) and a new rate gets time to
/// show whether the path carries it.
const INCREASE_INTERVAL: Duration = Duration::from_secs(1);

/// Decides the shared encoder's bitrate from the driving outputs' estimates. Pure: the caller
/// passes the time and the estimates.
#[derive(Clone, Debug)]
pub struct EncoderRate {
    min_kbps: u32,
    max_kbps: u32,
    current_kbps: u32,
    last_change: Option<Instant>,
}

impl EncoderRate {
    /// The encoder runs at `start_kbps` now, and may move within `min_kbps..=max_kbps`.
    pub fn new(min_kbps: u32, start_kbps: u32, max_kbps: u32) -> Self {
        let max_kbps = max_kbps.max(min_kbps);
        Self {
            min_kbps,
            max_kbps,
            current_kbps: start_kbps.clamp(min_kbps, max_kbps),
            last_change: None,
        }
    }

    /// The bitrate the encoder is set to, in kbit/s.
    pub fn current_kbps(&self) -> u32 {
        self.current_kbps
    }

    /// Given the estimates (bit/s) of the driving outputs that have one, the new encoder
    /// bitrate if it should change now. The lowest estimate wins; no estimate holds the rate.
    pub fn decide(&mut self, now: Instant, estimates: impl IntoIterator<Item = f64>) -> Option<u32> {
        let lowest = estimates
            .into_iter()
            .filter(|e| e.is_finite() && *e > 0.0)
            .reduce(f64::min)?;
        let wanted = ((lowest / 1000.0).round() as u32).clamp(self.min_kbps, self.max_kbps);
        let current = f64::from(self.current_kbps);
        let since = self.last_change.map(|t| now.saturating_duration_since(t));
        let change = if f64::from(wanted) < current * (1.0 - DECREASE_DEADBAND) {
            since.is_none_or(|s| s >= DECREASE_INTERVAL)
        } else if f64::from(wanted) > current * (1.0 + INCREASE_DEADBAND) {
            since.is_none_or(|s| s >= INCREASE_INTERVAL)
        } else {
            // Pinned at a limit: reach it exactly even inside the deadband.
            wanted != self.current_kbps
                && (wanted == self.min_kbps || wanted == self.max_kbps)
                && since.is_none_or(|s| s >= DECREASE_INTERVAL)
        };
        if !change {
            return None;
        }
        self.current_kbps = wanted;
        self.last_change = Some(now);
        Some(wanted)
    }
}

/// The encoder's side: the estimates it follows and the decision when to.
#[derive(Clone, Debug)]
pub struct EncoderBitrate {
    drivers: Vec<BitrateEstimate>,
    rate: EncoderRate,
}

impl EncoderBitrate {
    /// Follows the lowest of `drivers`' estimates within `limits`; the encoder starts at
    /// `limits.start_bps`.
    pub fn new(drivers: Vec<BitrateEstimate>, limits: BitrateLimits) -> Self {
        let kbps = |bps: f64| (bps / 1000.0).round() as u32;
        Self {
            drivers,
            rate: EncoderRate::new(kbps(limits.min_bps), kbps(limits.start_bps), kbps(limits.max_bps)),
        }
    }

    /// The bitrate the encoder is set to, in kbit/s.
    pub fn current_kbps(&self) -> u32 {
        self.rate.current_kbps()
    }

    /// The new encoder bitrate in kbit/s, if it should change at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<u32> {
        let estimates: Vec<f64> = self.drivers.iter().filter_map(BitrateEstimate::get).collect();
        self.rate.decide(now, estimates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SORA_LIKE_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nb=AS:9000\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nb=AS:64\r\na=mid:0\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\nb=AS:1000\r\nb=TIAS:950000\r\na=mid:1\r\n\
m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nb=AS:30\r\n";

    #[test]
    fn the_video_sections_tias_caps_the_bitrate_before_its_as_and_other_sections_do_not_count() {
        assert_eq!(remote_video_cap_bps(SORA_LIKE_OFFER), Some(950_000.0));
        let without_tias = SORA_LIKE_OFFER.replace("b=TIAS:950000\r\n", "");
        assert_eq!(remote_video_cap_bps(&without_tias), Some(1_000_000.0));
        let without_video_cap = without_tias.replace("b=AS:1000\r\n", "");
        assert_eq!(
            remote_video_cap_bps(&without_video_cap),
            None,
            "session and audio lines are not video's"
        );
        assert_eq!(remote_video_cap_bps("m=video 9 RTP/AVP 96\nb=AS:0\nb=AS:-5\n"), None);
    }

    #[test]
    fn the_remote_cap_bounds_the_estimate_and_lifting_it_restores_the_estimate() {
        let estimate = BitrateEstimate::default();
        estimate.set(2_000_000.0);

        estimate.set_cap(remote_video_cap_bps(SORA_LIKE_OFFER));
        assert_eq!(estimate.get(), Some(950_000.0));
        estimate.set(500_000.0);
        assert_eq!(estimate.get(), Some(500_000.0), "below the cap the estimate rules");
        estimate.set_cap(None);
        estimate.set(2_000_000.0);
        assert_eq!(estimate.get(), Some(2_000_000.0));
    }

    proptest::proptest! {
        #[test]
        fn any_sdp_text_gives_a_positive_cap_or_none(sdp in ".{0,400}", lines in proptest::collection::vec("(m=video 9 X 1|m=audio 9 X 1|b=AS:[0-9]{0,12}|b=TIAS:[0-9-]{0,14}|a=[a-z:]{0,10})", 0..12)) {
            for text in [sdp, lines.join("\r\n")] {
                if let Some(cap) = remote_video_cap_bps(&text) {
                    proptest::prop_assert!(cap > 0.0 && cap.is_finite());
                }
            }
        }
    }
    use rtc::interceptor::ConstantBitrate;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_falling_estimate_lowers_the_encoder_at_once() {
        let t0 = Instant::now();
        let mut rate = EncoderRate::new(150, 1500, 1500);

        let decided = rate.decide(t0, [600_000.0]);

        assert_eq!(decided, Some(600));
        assert_eq!(rate.current_kbps(), 600);
    }

    #[test]
    fn the_lowest_of_several_estimates_wins() {
        let mut rate = EncoderRate::new(150, 1500, 3000);

        let decided = rate.decide(Instant::now(), [2_000_000.0, 700_000.0, 1_200_000.0]);

        assert_eq!(decided, Some(700));
    }

    #[test]
    fn no_estimate_holds_the_current_rate() {
        let mut rate = EncoderRate::new(150, 1500, 3000);

        assert_eq!(rate.decide(Instant::now(), []), None);
        assert_eq!(rate.decide(Instant::now(), [0.0, f64::NAN]), None);
        assert_eq!(rate.current_kbps(), 1500);
    }

    #[test]
    fn estimates_are_clamped_to_the_configured_range() {
        let t0 = Instant::now();
        let mut rate = EncoderRate::new(200, 1000, 1500);

        assert_eq!(rate.decide(t0, [50_000.0]), Some(200));
        assert_eq!(rate.decide(t0 + Duration::from_secs(2), [9_000_000.0]), Some(1500));
    }

    #[test]
    fn small_moves_inside_the_deadband_change_nothing() {
        let t0 = Instant::now();
        let mut rate = EncoderRate::new(150, 1000, 3000);

        assert_eq!(rate.decide(t0, [970_000.0]), None);
        assert_eq!(rate.decide(t0 + Duration::from_secs(5), [1_030_000.0]), None);
        assert_eq!(rate.current_kbps(), 1000);
    }

    #[test]
    fn decreases_follow_each_other_no_faster_than_the_decrease_interval() {
        let t0 = Instant::now();
        let mut rate = EncoderRate::new(150, 1500, 1500);
        rate.decide(t0, [1_000_000.0]);

        assert_eq!(rate.decide(t0 + 100 * MS, [600_000.0]), None);
        assert_eq!(rate.decide(t0 + 200 * MS, [600_000.0]), Some(600));
    }

    #[test]
    fn increases_wait_a_second_after_any_change() {
        let t0 = Instant::now();
        let mut rate = EncoderRate::new(150, 1500, 1500);
        rate.decide(t0, [600_000.0]);

        assert_eq!(rate.decide(t0 + 500 * MS, [900_000.0]), None);
        assert_eq!(rate.decide(t0 + 1000 * MS, [900_000.0]), Some(900));
    }

    #[test]
    fn reaching_a_limit_is_exact_even_inside_the_deadband() {
        let t0 = Instant::now();
        let mut rate = EncoderRate::new(150, 1460, 1500);

        assert_eq!(rate.decide(t0, [1_490_000.0, 2_000_000.0]), None);
        assert_eq!(rate.decide(t0, [1_600_000.0]), Some(1500));
    }

    #[test]
    fn limits_from_kbps_clamp_the_start() {
        let limits = BitrateLimits::from_kbps(300, 100, 2000);

        assert_eq!(limits.start_bps, 300_000.0);
        assert_eq!(BitrateLimits::fixed_kbps(800).min_bps, 800_000.0);
    }

    #[test]
    fn the_reporting_estimator_publishes_a_lowered_target_on_loss() {
        let estimate = BitrateEstimate::default();
        let mut wrapped = ReportingEstimator::new(Gcc::new(1_000_000.0, 100_000.0, 2_000_000.0), estimate.clone());
        assert_eq!(estimate.get(), Some(1_000_000.0));

        // Every packet of a batch lost: the loss half must bring the target down.
        let t0 = Instant::now();
        for batch in 0..10u64 {
            let at = t0 + Duration::from_millis(batch * 100);
            let reports: Vec<PacketReport> = (0..10u64)
                .map(|i| PacketReport {
                    ssrc: 1,
                    id: batch * 10 + i,
                    rtp_sequence_number: (batch * 10 + i) as u16,
                    is_twcc: true,
                    twcc_sequence_number: (batch * 10 + i) as u16,
                    size: 1200,
                    arrived: false,
                    departure: at,
                    arrival: None,
                    ecn: Default::default(),
                })
                .collect();
            wrapped.on_reports(at, &reports);
        }

        let published = estimate.get().expect("an estimate");
        assert!(published < 1_000_000.0, "{published}");
        assert_eq!(wrapped.target_bitrate(), published);
    }

    /// 10 packets of 1250 bytes every 100 ms (1 Mbit/s), every other one lost if `lossy`.
    fn feed<E: BandwidthEstimator>(estimator: &mut E, t0: Instant, seconds: u64, lossy: bool) {
        for batch in 0..seconds * 10 {
            let at = t0 + Duration::from_millis(batch * 100);
            let reports: Vec<PacketReport> = (0..10u64)
                .map(|i| {
                    let id = batch * 10 + i;
                    let arrived = !lossy || i % 2 == 0;
                    PacketReport {
                        ssrc: 1,
                        id,
                        rtp_sequence_number: id as u16,
                        is_twcc: true,
                        twcc_sequence_number: id as u16,
                        size: 1250,
                        arrived,
                        departure: at,
                        arrival: arrived.then(|| Duration::from_millis(batch * 100 + 20)),
                        ecn: Default::default(),
                    }
                })
                .collect();
            estimator.on_reports(at, &reports);
        }
    }

    #[test]
    fn the_estimate_never_falls_far_below_what_the_path_delivered() {
        // GCC's loss half alone would keep halving under 50 % loss.
        let mut floored = DeliveredBounds::new(Gcc::new(1_000_000.0, 100_000.0, 2_000_000.0), 2_000_000.0);

        feed(&mut floored, Instant::now(), 5, true);

        // Half of 1 Mbit/s arrived: the floor is about 85 % of that.
        let target = floored.target_bitrate();
        assert!((400_000.0..=500_000.0).contains(&target), "{target}");
        assert!(floored.stats().loss_based_bitrate.expect("loss half") < 200_000.0);
    }

    #[test]
    fn the_delivered_floor_never_lifts_above_the_maximum_or_lowers_the_inner_target() {
        let mut capped = DeliveredBounds::new(ConstantBitrate::new(100_000.0), 500_000.0);
        feed(&mut capped, Instant::now(), 2, false);
        assert_eq!(capped.target_bitrate(), 500_000.0);

        let mut higher = DeliveredBounds::new(ConstantBitrate::new(3_000_000.0), 5_000_000.0);
        feed(&mut higher, Instant::now(), 2, false);
        assert_eq!(higher.target_bitrate(), 3_000_000.0);
    }

    #[test]
    fn the_estimate_climbs_no_further_than_one_and_a_half_times_what_was_delivered() {
        // 1 Mbit/s delivered (100 packets of 1250 bytes a second) while the inner estimate
        // jumps from 600 kbit/s to 3 Mbit/s: the sender sends less than it may (a suspended
        // layer), so nothing backs that jump.
        let t0 = Instant::now();
        let mut bounded = DeliveredBounds::new(ConstantBitrate::new(600_000.0), 5_000_000.0);
        feed(&mut bounded, t0, 2, false);
        bounded.inner = ConstantBitrate::new(3_000_000.0);
        feed(&mut bounded, t0 + Duration::from_secs(2), 2, false);

        let target = bounded.target_bitrate();

        // 1.5 × the delivered rate + 10 kbit/s; the one-second window holds 10 or 11 batches.
        assert!(
            (1_000_000.0..=1.5 * 1_100_000.0 + 10_000.0).contains(&target),
            "{target}"
        );
    }

    #[test]
    fn the_encoder_ignores_drivers_without_an_estimate() {
        let (sora, whip) = (BitrateEstimate::default(), BitrateEstimate::default());
        let mut encoder = EncoderBitrate::new(
            vec![sora.clone(), whip.clone()],
            BitrateLimits::from_kbps(150, 1500, 1500),
        );
        let t0 = Instant::now();
        assert_eq!(encoder.poll(t0), None);

        sora.set(800_000.0);
        assert_eq!(encoder.poll(t0), Some(800));

        // The lower publisher goes away: only the other one counts.
        sora.clear();
        whip.set(1_400_000.0);
        assert_eq!(encoder.poll(t0 + Duration::from_secs(1)), Some(1400));
    }

    #[test]
    fn a_cleared_estimate_is_none() {
        let estimate = BitrateEstimate::default();
        estimate.set(500_000.0);

        estimate.clear();

        assert_eq!(estimate.get(), None);
    }
}
