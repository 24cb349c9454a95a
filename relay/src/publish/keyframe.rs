//! Lets viewers' keyframe requests (PLI, FIR) reach the encoder, and limits how often they are
//! honoured.
//!
//! webrtc-rs stops inbound RTCP at the end of its interceptor chain unless an interceptor marks
//! it for the application; this one marks exactly the keyframe requests, so the publisher's
//! track events carry them and the encoder can answer with a keyframe. The encoder then honours
//! them through a [`KeyframeThrottle`], on media time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{Attribute, Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// Default least media time between two keyframes forced by requests.
pub const DEFAULT_KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// What became of keyframe requests once a keyframe went out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestsAnswered {
    /// Requests answered by this keyframe (0 or 1: the first of those pending).
    pub honoured: u64,
    /// Further requests merged into the same keyframe.
    pub coalesced: u64,
}

/// Honours keyframe requests at most once per interval of media time. Requests that arrive
/// sooner stay pending (never lost) and are all answered by the next keyframe.
#[derive(Clone, Debug)]
pub struct KeyframeThrottle {
    min_interval: Duration,
    pending: u64,
    last_keyframe: Option<Duration>,
}

impl KeyframeThrottle {
    /// A throttle allowing one requested keyframe per `min_interval`.
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval,
            pending: 0,
            last_keyframe: None,
        }
    }

    /// Adds `requests` new requests; whether the frame at `pts` must be a keyframe.
    pub fn force(&mut self, requests: u64, pts: Duration) -> bool {
        self.pending = self.pending.saturating_add(requests);
        self.pending > 0
            && self
                .last_keyframe
                .is_none_or(|last| pts.saturating_sub(last) >= self.min_interval)
    }

    /// A frame at `pts` was encoded; a keyframe (forced, periodic or after a resize) answers
    /// every pending request.
    pub fn encoded(&mut self, pts: Duration, keyframe: bool) -> RequestsAnswered {
        if !keyframe {
            return RequestsAnswered::default();
        }
        self.last_keyframe = Some(pts);
        let pending = std::mem::take(&mut self.pending);
        RequestsAnswered {
            honoured: pending.min(1),
            coalesced: pending.saturating_sub(1),
        }
    }
}

/// Where in the interceptor chain this sits: after the defaults, nearest the application.
pub const KEYFRAME_REQUEST_SLOT: usize = 14_000;

/// Whether an RTCP packet asks the sender for a keyframe.
pub fn is_keyframe_request(packet: &dyn rtc::rtcp::Packet) -> bool {
    let any = packet.as_any();
    any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>()
}

/// Marks inbound PLI/FIR for delivery to the application; everything else passes unchanged.
#[derive(Default)]
pub struct KeyframeRequestInterceptor {
    read_queue: VecDeque<TaggedPacket>,
    write_queue: VecDeque<TaggedPacket>,
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for KeyframeRequestInterceptor {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet
            && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
        {
            let requests = packets
                .iter()
                .filter(|p| is_keyframe_request(p.as_ref()))
                .cloned()
                .collect();
            msg.message.packet = Packet::Rtcp(requests);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read_queue.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read_queue.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write_queue.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write_queue.pop_front()
    }
}

impl Interceptor for KeyframeRequestInterceptor {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtcp::receiver_report::ReceiverReport;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn requests_within_the_interval_wait_and_are_answered_by_one_keyframe() {
        let mut throttle = KeyframeThrottle::new(ms(500));
        assert!(throttle.force(1, ms(0)));
        assert_eq!(
            throttle.encoded(ms(0), true),
            RequestsAnswered {
                honoured: 1,
                coalesced: 0
            }
        );

        assert!(!throttle.force(3, ms(100)), "too soon");
        assert_eq!(throttle.encoded(ms(100), false), RequestsAnswered::default());
        assert!(!throttle.force(2, ms(400)));
        assert!(throttle.force(0, ms(500)), "pending requests are not lost");
        assert_eq!(
            throttle.encoded(ms(500), true),
            RequestsAnswered {
                honoured: 1,
                coalesced: 4
            }
        );
        assert!(!throttle.force(0, ms(600)), "nothing pending");
    }

    #[test]
    fn a_forced_frame_the_encoder_skipped_keeps_the_request_pending() {
        let mut throttle = KeyframeThrottle::new(ms(500));
        assert!(throttle.force(1, ms(0)));
        throttle.encoded(ms(0), false);
        assert!(throttle.force(0, ms(33)));
    }

    #[test]
    fn any_keyframe_restarts_the_interval() {
        let mut throttle = KeyframeThrottle::new(ms(500));
        throttle.encoded(ms(1000), true);
        assert!(!throttle.force(1, ms(1200)));
        assert!(throttle.force(0, ms(1500)));
    }

    #[test]
    fn pli_and_fir_are_keyframe_requests_but_receiver_reports_are_not() {
        let pli = PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc: 2,
        };
        let fir = FullIntraRequest {
            sender_ssrc: 1,
            media_ssrc: 2,
            fir: vec![],
        };
        let rr = ReceiverReport::default();
        assert!(is_keyframe_request(&pli));
        assert!(is_keyframe_request(&fir));
        assert!(!is_keyframe_request(&rr));
    }
}
