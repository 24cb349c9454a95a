//! Simulcast reception: every layer (rid) of a connection's video depacketized, decoded and
//! counted on its own, and the best layer being received feeding the connection's `video`
//! counters, frame log and last picture, so that tooling reading those keeps working.
//!
//! "Best" is the layer whose last decoded picture is largest among the layers that decoded one
//! within [`FEED_WINDOW`] (ties: the later one in the offer's encodings, which lists the lowest
//! layer first). When a sender pauses its top layer, the next one down takes over.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::packetizer::Depacketizer;
use serde::Serialize;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use crate::codec::VideoCodec;
use crate::framestats::FpsCounter;
use crate::receive::{self, DecodedPicture, ReceiveError, StreamReceiver, Tally, VideoStats};

/// A layer feeds the connection only if it decoded a picture this recently.
pub const FEED_WINDOW: Duration = Duration::from_secs(1);
/// The span a layer's bitrate is measured over.
pub const BITRATE_WINDOW: Duration = Duration::from_secs(2);

/// Where the pictures of the layer feeding the connection go (the connection's frame log).
pub type PictureSink = Arc<dyn Fn(DecodedPicture) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep serving it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What is measured of a layer as its packets and pictures come.
#[derive(Debug, Default)]
struct LayerLive {
    ssrc: Option<u32>,
    width: Option<u32>,
    height: Option<u32>,
    fps: FpsCounter,
    first_packet: Option<Instant>,
    recent_bytes: VecDeque<(Instant, u64)>,
}

impl LayerLive {
    fn prune(&mut self, now: Instant) {
        while self
            .recent_bytes
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= BITRATE_WINDOW)
        {
            self.recent_bytes.pop_front();
        }
    }

    /// Payload kbit/s over the last [`BITRATE_WINDOW`], or over the time since the first packet
    /// when that is shorter.
    fn bitrate_kbps(&self, now: Instant) -> f64 {
        let Some(first) = self.first_packet else {
            return 0.0;
        };
        let span = now.saturating_duration_since(first).min(BITRATE_WINDOW);
        if span < Duration::from_millis(100) {
            return 0.0;
        }
        let bytes: u64 = self
            .recent_bytes
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) < BITRATE_WINDOW)
            .map(|(_, b)| b)
            .sum();
        bytes as f64 * 8.0 / span.as_secs_f64() / 1000.0
    }
}

/// One simulcast layer.
#[derive(Debug)]
pub struct Layer {
    /// Its rid.
    pub rid: String,
    /// Its receive and decode counters.
    pub stats: Arc<VideoStats>,
    feeding: Arc<AtomicBool>,
    live: Mutex<LayerLive>,
}

/// A layer as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LayerView {
    /// The layer's rid.
    pub rid: String,
    /// Its SSRC, once its first packet arrived.
    pub ssrc: Option<u32>,
    /// RTP packets received.
    pub packets: u64,
    /// RTP payload bytes received.
    pub bytes: u64,
    /// Pictures decoded.
    pub frames_decoded: u64,
    /// Of those, keyframes.
    pub keyframes_decoded: u64,
    /// Frames the decoder refused.
    pub decode_errors: u64,
    /// Keyframe requests sent for this layer's SSRC.
    pub plis_sent: u64,
    /// Width of the last decoded picture.
    pub width: Option<u32>,
    /// Height of the last decoded picture.
    pub height: Option<u32>,
    /// Pictures decoded over the last second.
    pub fps: f64,
    /// Payload kbit/s over the last 2 s (or since the first packet when that is shorter).
    pub bitrate_kbps: f64,
    /// Whether this layer feeds the connection's `video` counters and frame log now.
    pub feeding: bool,
}

impl Layer {
    fn new(rid: String) -> Self {
        Self {
            rid,
            stats: Arc::default(),
            feeding: Arc::default(),
            live: Mutex::default(),
        }
    }

    fn note_packet(&self, now: Instant, payload_bytes: usize) {
        let mut live = lock(&self.live);
        live.first_packet.get_or_insert(now);
        live.recent_bytes.push_back((now, payload_bytes as u64));
        live.prune(now);
    }

    fn view(&self, now: Instant) -> LayerView {
        let stats = self.stats.snapshot();
        let live = lock(&self.live);
        LayerView {
            rid: self.rid.clone(),
            ssrc: live.ssrc,
            packets: stats.packets,
            bytes: stats.bytes,
            frames_decoded: stats.frames_decoded,
            keyframes_decoded: stats.keyframes_decoded,
            decode_errors: stats.decode_errors,
            plis_sent: stats.plis_sent,
            width: live.width,
            height: live.height,
            fps: live.fps.fps(now),
            bitrate_kbps: (live.bitrate_kbps(now) * 10.0).round() / 10.0,
            feeding: self.feeding.load(Ordering::Acquire),
        }
    }
}

/// Which layer feeds the connection.
#[derive(Debug, Default)]
struct Feed {
    /// Per layer: when it last decoded a picture, and that picture's area.
    last: Vec<Option<(Instant, u64)>>,
    /// The next frame-log index: the connection's pictures are numbered across layer changes.
    next_index: u64,
}

/// The simulcast layers of one connection: the offered rids the client's answer sends.
#[derive(Debug)]
pub struct SimulcastLayers {
    layers: Vec<Layer>,
    feed: Mutex<Feed>,
}

impl SimulcastLayers {
    /// Layers for `rids`, in the encodings' order (lowest first).
    pub fn new(rids: &[String]) -> Self {
        Self {
            layers: rids.iter().cloned().map(Layer::new).collect(),
            feed: Mutex::new(Feed {
                last: vec![None; rids.len()],
                next_index: 0,
            }),
        }
    }

    /// The layers, in the encodings' order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    fn position(&self, rid: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.rid == rid)
    }

    /// Every layer's view, sorted by rid.
    pub fn view(&self) -> Vec<LayerView> {
        let now = Instant::now();
        let mut views: Vec<LayerView> = self.layers.iter().map(|l| l.view(now)).collect();
        views.sort_by(|a, b| a.rid.cmp(&b.rid));
        views
    }

    /// A picture of layer `index` was decoded: it is measured, the feeding layer chosen again,
    /// and the picture passed to `sink` (renumbered in the connection's sequence) when its layer
    /// is the one feeding. Under one lock, so that the connection's pictures stay in order.
    fn on_picture(&self, index: usize, mut decoded: DecodedPicture, sink: &PictureSink) {
        let now = Instant::now();
        let (width, height) = (decoded.picture.width(), decoded.picture.height());
        let Some(layer) = self.layers.get(index) else {
            return;
        };
        {
            let mut live = lock(&layer.live);
            live.width = Some(width);
            live.height = Some(height);
            live.fps.record(now);
        }
        let mut feed = lock(&self.feed);
        if let Some(slot) = feed.last.get_mut(index) {
            *slot = Some((now, u64::from(width) * u64::from(height)));
        }
        let best = feed
            .last
            .iter()
            .enumerate()
            .filter_map(|(i, last)| last.map(|(at, area)| (i, at, area)))
            .filter(|(_, at, _)| now.saturating_duration_since(*at) < FEED_WINDOW)
            .max_by_key(|(i, _, area)| (*area, *i))
            .map(|(i, _, _)| i);
        for (i, l) in self.layers.iter().enumerate() {
            let feeding = best == Some(i);
            if l.feeding.swap(feeding, Ordering::AcqRel) != feeding && feeding {
                tracing::info!(rid = %l.rid, width, height, "simulcast layer now feeds the connection");
            }
        }
        if best == Some(index) {
            decoded.index = feed.next_index;
            feed.next_index += 1;
            sink(decoded);
        }
    }
}

/// Reads a simulcast video track until it ends: one [`StreamReceiver`] per layer, bound by the
/// rid of the layer's first packet; keyframe requests go to each layer's own SSRC.
pub async fn run_simulcast_video_track(
    track: Arc<dyn TrackRemote>,
    layers: Arc<SimulcastLayers>,
    connection: Arc<VideoStats>,
    sink: PictureSink,
) -> Result<(), ReceiveError> {
    let ssrc = track.ssrcs().await.first().copied().ok_or(ReceiveError::NoCodec)?;
    let codec = receive::track_codec(&*track, ssrc).await?;
    tracing::info!(%codec, rids = ?layers.layers.iter().map(|l| &l.rid).collect::<Vec<_>>(), "simulcast video track started");
    let receiver = LayerReceiver {
        track,
        layers,
        connection,
        sink,
        codec,
    };
    match codec {
        VideoCodec::Vp8 => receiver.run::<Vp8Packet>().await,
        VideoCodec::H264 => receiver.run::<H264Packet>().await,
    }
}

struct LayerReceiver {
    track: Arc<dyn TrackRemote>,
    layers: Arc<SimulcastLayers>,
    connection: Arc<VideoStats>,
    sink: PictureSink,
    codec: VideoCodec,
}

/// A layer's stream: its position among the layers and its receiver.
type Bound<T> = (usize, StreamReceiver<T>);

impl LayerReceiver {
    async fn run<T: Depacketizer + Default + Send + 'static>(self) -> Result<(), ReceiveError> {
        let mut streams: HashMap<u32, Bound<T>> = HashMap::new();
        let mut unbindable: HashSet<u32> = HashSet::new();
        while let Some(event) = self.track.poll().await {
            let packet = match event {
                TrackRemoteEvent::OnOpen(init) => {
                    match init.rid.as_deref() {
                        Some(rid) => self.bind(&mut streams, init.ssrc, rid).await?,
                        None => tracing::warn!(ssrc = init.ssrc, "simulcast stream without a rid ignored"),
                    }
                    continue;
                }
                TrackRemoteEvent::OnRtpPacket(packet) => packet,
                TrackRemoteEvent::OnEnded => break,
                _ => continue,
            };
            let ssrc = packet.header.ssrc;
            if !streams.contains_key(&ssrc) && !unbindable.contains(&ssrc) {
                // The layer's OnOpen can be lost to a full event queue: ask the track instead.
                match self.track.rid(ssrc).await {
                    Some(rid) => self.bind(&mut streams, ssrc, &rid).await?,
                    None => {
                        tracing::debug!(ssrc, "packets of an SSRC without a rid ignored");
                        unbindable.insert(ssrc);
                    }
                }
            }
            let Some((index, stream)) = streams.get_mut(&ssrc) else {
                continue;
            };
            let now = Instant::now();
            if let Some(layer) = self.layers.layers.get(*index) {
                layer.note_packet(now, packet.payload.len());
            }
            if stream.push(packet, now) {
                receive::send_pli(&*self.track, ssrc, stream.tally()).await;
            }
        }
        for (ssrc, (index, stream)) in streams {
            let summary = stream.tally().snapshot();
            stream.finish().await;
            let rid = self.layers.layers.get(index).map(|l| l.rid.as_str()).unwrap_or("");
            tracing::info!(ssrc, rid, ?summary, "simulcast layer ended");
        }
        Ok(())
    }

    /// Starts receiving layer `rid` on `ssrc` (replacing an earlier SSRC of the same layer).
    async fn bind<T: Depacketizer + Default + Send + 'static>(
        &self,
        streams: &mut HashMap<u32, Bound<T>>,
        ssrc: u32,
        rid: &str,
    ) -> Result<(), ReceiveError> {
        let Some(index) = self.layers.position(rid) else {
            tracing::warn!(ssrc, rid, "a layer that was not negotiated is ignored");
            return Ok(());
        };
        if streams.get(&ssrc).is_some_and(|(i, _)| *i == index) {
            return Ok(());
        }
        let earlier: Vec<u32> = streams
            .iter()
            .filter(|(_, (i, _))| *i == index)
            .map(|(s, _)| *s)
            .collect();
        for old in earlier {
            if let Some((_, stream)) = streams.remove(&old) {
                tracing::info!(rid, old_ssrc = old, ssrc, "simulcast layer changed SSRC");
                stream.finish().await;
            }
        }
        let layer = &self.layers.layers[index];
        lock(&layer.live).ssrc = Some(ssrc);
        let tally = Tally::mirrored(
            Arc::clone(&layer.stats),
            Arc::clone(&self.connection),
            Arc::clone(&layer.feeding),
        );
        let layers = Arc::clone(&self.layers);
        let sink = Arc::clone(&self.sink);
        let stream = StreamReceiver::new(self.codec, tally, move |decoded| {
            layers.on_picture(index, decoded, &sink)
        })?;
        tracing::info!(rid, ssrc, codec = %self.codec, "simulcast layer started");
        streams.insert(ssrc, (index, stream));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::picture::Picture;

    fn picture(width: u32, height: u32) -> DecodedPicture {
        let now = Instant::now();
        DecodedPicture {
            picture: Picture::filled(width, height, [16, 128, 128]).expect("picture"),
            rtp_timestamp: 0,
            keyframe: true,
            arrival: now,
            decoded_at: now,
            index: 99,
        }
    }

    /// (width, connection index) of every picture passed on.
    type Seen = Arc<Mutex<Vec<(u32, u64)>>>;

    fn recorder() -> (PictureSink, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        let sink: PictureSink = Arc::new(move |d: DecodedPicture| lock(&into).push((d.picture.width(), d.index)));
        (sink, seen)
    }

    fn rids() -> Vec<String> {
        ["r0", "r1", "r2"].map(String::from).to_vec()
    }

    #[test]
    fn the_largest_layer_decoding_feeds_the_connection_numbered_in_one_sequence() {
        let layers = SimulcastLayers::new(&rids());
        let (sink, seen) = recorder();
        layers.on_picture(0, picture(320, 180), &sink);
        layers.on_picture(1, picture(640, 360), &sink);
        layers.on_picture(0, picture(320, 180), &sink);
        layers.on_picture(2, picture(1280, 720), &sink);
        layers.on_picture(1, picture(640, 360), &sink);
        layers.on_picture(2, picture(1280, 720), &sink);
        assert_eq!(*lock(&seen), [(320, 0), (640, 1), (1280, 2), (1280, 3)]);
        let feeding: Vec<bool> = layers.view().iter().map(|l| l.feeding).collect();
        assert_eq!(feeding, [false, false, true]);
    }

    #[test]
    fn the_layer_views_are_sorted_by_rid_with_the_last_picture_size() {
        let layers = SimulcastLayers::new(&["r2", "r0", "r1"].map(String::from));
        let (sink, _) = recorder();
        layers.on_picture(1, picture(320, 180), &sink);
        let views = layers.view();
        let rids: Vec<&str> = views.iter().map(|l| l.rid.as_str()).collect();
        assert_eq!(rids, ["r0", "r1", "r2"]);
        assert_eq!((views[0].width, views[0].height), (Some(320), Some(180)));
        assert_eq!(views[0].fps, 1.0);
        assert_eq!((views[1].width, views[1].ssrc), (None, None));
    }

    #[test]
    fn bitrate_counts_payload_over_the_window_or_since_the_first_packet() {
        let t0 = Instant::now();
        let mut live = LayerLive::default();
        assert_eq!(live.bitrate_kbps(t0), 0.0);
        live.first_packet = Some(t0);
        for ms in (0..1000).step_by(10) {
            live.recent_bytes.push_back((t0 + Duration::from_millis(ms), 125));
        }
        // 100 packets of 125 bytes in 1 s: 100 kbit/s.
        let one_second = live.bitrate_kbps(t0 + Duration::from_secs(1));
        assert!((one_second - 100.0).abs() < 1e-6, "{one_second}");
        // Later, the same bytes are spread over the 2 s window, then age out.
        let later = live.bitrate_kbps(t0 + Duration::from_millis(2500));
        assert!(later < 50.0, "{later}");
        assert_eq!(live.bitrate_kbps(t0 + Duration::from_secs(5)), 0.0);
    }
}
