//! `livefilter-relay bench --input clip.y4m --filter NAME`: the relay's per-frame path on a real
//! clip. The clip is first encoded as a browser would send it (not timed); then each frame
//! arrives at its own time (the clip's frame rate) and goes through decode → filter
//! (preprocess, infer, postprocess) → encode, each part timed. A frame still in the pipeline when
//! the next one arrives makes the next one wait, as it would in the relay; a frame decoded after
//! its successor was due is dropped, as the newest-frame slot would.

use std::fmt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::codec::vpx::Vp8Encoder;
use crate::codec::{CodecError, EncoderConfig, VideoCodec, VideoEncoder, new_decoder, new_encoder};
use crate::filter::{FilterConfig, FilterConfigExt, FilterError, Filtered, Probe};
use crate::latency::{Percentiles, percentiles};
use crate::y4m::{Reader, Y4mError};

/// Why the benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineBenchError {
    /// The clip cannot be opened.
    #[error("cannot open clip {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The clip is malformed.
    #[error("clip {path}: {source}")]
    Clip {
        path: String,
        #[source]
        source: Y4mError,
    },
    /// The clip has no frames.
    #[error("clip {0} has no frames")]
    Empty(String),
    /// Encoding or decoding failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The filter could not start or failed.
    #[error(transparent)]
    Filter(#[from] FilterError),
}

/// What to run.
#[derive(Clone, Debug)]
pub struct PipelineBenchOptions {
    /// The filter, as configured for `serve`.
    pub filter: FilterConfig,
    /// The browser's codec (the clip is encoded with it) and the output codec.
    pub codec: VideoCodec,
    /// Output bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Frames to run (the clip loops); `None`: the clip once.
    pub frames: Option<u64>,
    /// Frames run first and not measured (model warm-up).
    pub warmup: u64,
    /// VP8 `cpu-used` (speed against quality); `None`: the relay's default.
    pub vp8_cpu_used: Option<i32>,
    /// Periodic keyframes in media time (zero: only the first).
    pub keyframe_interval: Duration,
    /// Decode every output frame and report its luma PSNR against the filtered frame, and the
    /// filter's steadiness (mask flicker, keypoint jitter). These checks cost CPU, so the CPU
    /// figure is then not reported.
    pub quality: bool,
    /// Added to every filter call (a sleep): stands in for a filter slower than the frame rate.
    pub filter_delay: Duration,
}

impl PipelineBenchOptions {
    /// The relay's defaults for `filter` and `codec`.
    pub fn new(filter: FilterConfig, codec: VideoCodec) -> Self {
        Self {
            filter,
            codec,
            bitrate_kbps: EncoderConfig::default().bitrate_kbps,
            frames: None,
            warmup: 10,
            vp8_cpu_used: None,
            keyframe_interval: EncoderConfig::default().keyframe_interval,
            quality: false,
            filter_delay: Duration::ZERO,
        }
    }
}

/// Figures of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineBenchReport {
    /// Filter name.
    pub filter: &'static str,
    /// Where its model ran.
    pub device: Option<String>,
    /// Clip size.
    pub width: u32,
    /// Clip size.
    pub height: u32,
    /// Clip frame rate.
    pub fps: f64,
    /// Frames measured.
    pub frames: u64,
    /// Frames dropped because the pipeline was still busy.
    pub dropped: u64,
    /// Per stage, in path order: decode, preprocess, infer, postprocess, encode.
    pub stages: Vec<(&'static str, Percentiles)>,
    /// Arrival → encoded (what the relay adds before sending).
    pub total: Percentiles,
    /// Encode time of the keyframes alone, and how many there were.
    pub keyframes: (u64, Percentiles),
    /// Output bitrate in kbit/s over the measured span.
    pub kbps: f64,
    /// CPU time of the whole process (every thread) per measured frame, in ms; `None` where
    /// the OS does not tell or `quality` was on.
    pub cpu_ms_per_frame: Option<f64>,
    /// Mean luma PSNR of the output against the filtered frames, in dB (with `quality`).
    pub psnr_y: Option<f64>,
    /// The filter's steadiness from frame to frame (with `quality`, for filters that show it).
    pub steadiness: Option<Steadiness>,
    /// The total's p99 in each minute of the run (runs of two minutes or more).
    pub p99_by_minute: Vec<f64>,
    /// Peak resident memory of the process in MiB, where the OS tells.
    pub peak_rss_mib: Option<f64>,
}

impl fmt::Display for PipelineBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "bench {} {}x{} @ {:.0} fps, device {}: {} frames measured, {} dropped (busy)",
            self.filter,
            self.width,
            self.height,
            self.fps,
            self.device.as_deref().unwrap_or("none"),
            self.frames,
            self.dropped
        )?;
        writeln!(f, "{:<12}{:>9}{:>9}{:>9}", "stage", "p50 ms", "p95 ms", "p99 ms")?;
        let (keyframes, kf) = &self.keyframes;
        for (name, p) in self.stages.iter().chain([&("total", self.total), &("keyframe", *kf)]) {
            writeln!(f, "{:<12}{:>9.2}{:>9.2}{:>9.2}", name, p.p50, p.p95, p.p99)?;
        }
        write!(f, "output {:.0} kbit/s, {keyframes} keyframes", self.kbps)?;
        if let Some(psnr) = self.psnr_y {
            write!(f, ", luma PSNR {psnr:.2} dB")?;
        }
        writeln!(f)?;
        match self.steadiness {
            Some(Steadiness::Mask { flicker }) => {
                writeln!(f, "mask flicker (1 - mean IoU of consecutive masks) {flicker:.4}")?
            }
            Some(Steadiness::Keypoints {
                jitter_px,
                flips_per_frame,
            }) => writeln!(
                f,
                "keypoint jitter (median displacement between frames) {jitter_px:.2} px, {flips_per_frame:.3} shown/hidden changes per frame"
            )?,
            None => {}
        }
        if !self.p99_by_minute.is_empty() {
            let minutes: Vec<String> = self.p99_by_minute.iter().map(|v| format!("{v:.1}")).collect();
            writeln!(f, "total p99 by minute (ms): {}", minutes.join(" "))?;
        }
        match self.cpu_ms_per_frame {
            Some(ms) => writeln!(
                f,
                "CPU {ms:.2} ms per frame = {:.3} cores at {:.0} fps",
                ms * self.fps / 1000.0,
                self.fps
            )?,
            None => writeln!(f, "CPU not measured")?,
        }
        match self.peak_rss_mib {
            Some(m) => write!(f, "peak RSS {m:.0} MiB"),
            None => write!(f, "peak RSS unknown"),
        }
    }
}

/// How steady a filter's output is between consecutive frames (on a still clip, every change
/// is the filter's own).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Steadiness {
    /// Segmentation filters.
    Mask {
        /// 1 − the mean intersection-over-union of consecutive binary masks (alpha ≥ 128).
        flicker: f64,
    },
    /// Keypoint filters.
    Keypoints {
        /// Median displacement, in frame pixels, of keypoints drawn in both frames.
        jitter_px: f64,
        /// Mean number of keypoints that appear or disappear per frame.
        flips_per_frame: f64,
    },
}

/// Collects [`Steadiness`] from each frame's [`Probe`].
#[derive(Default)]
struct SteadinessMeter {
    mask: Option<(Vec<bool>, u32, u32)>,
    ious: Vec<f64>,
    points: Option<Vec<Option<(f32, f32)>>>,
    moves: Vec<f64>,
    flips: u64,
    pairs: u64,
}

impl SteadinessMeter {
    fn add(&mut self, probe: Probe<'_>) {
        match probe {
            Probe::Mask { alpha, width, height } => {
                let now: Vec<bool> = alpha.iter().map(|&a| a >= 128).collect();
                if let Some((before, w, h)) = &self.mask
                    && (*w, *h) == (width, height)
                {
                    let (inter, union) = now.iter().zip(before).fold((0u64, 0u64), |(i, u), (&a, &b)| {
                        (i + u64::from(a && b), u + u64::from(a || b))
                    });
                    self.ious
                        .push(if union == 0 { 1.0 } else { inter as f64 / union as f64 });
                }
                self.mask = Some((now, width, height));
            }
            Probe::Keypoints(now) => {
                if let Some(before) = &self.points
                    && before.len() == now.len()
                {
                    for (a, b) in now.iter().zip(before) {
                        match (a, b) {
                            (Some(a), Some(b)) => self.moves.push(f64::from((a.0 - b.0).hypot(a.1 - b.1))),
                            (Some(_), None) | (None, Some(_)) => self.flips += 1,
                            (None, None) => {}
                        }
                    }
                    self.pairs += 1;
                }
                self.points = Some(now.to_vec());
            }
        }
    }

    fn result(&self) -> Option<Steadiness> {
        if !self.ious.is_empty() {
            let mean = self.ious.iter().sum::<f64>() / self.ious.len() as f64;
            return Some(Steadiness::Mask { flicker: 1.0 - mean });
        }
        (self.pairs > 0).then(|| Steadiness::Keypoints {
            jitter_px: percentiles(&self.moves).p50,
            flips_per_frame: self.flips as f64 / self.pairs as f64,
        })
    }
}

/// Peak resident set size (`VmHWM`) of this process in MiB, on Linux.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Linux reports process times in these ticks per second whatever the kernel's own tick rate
/// (`USER_HZ`, fixed by the ABI).
const USER_HZ: f64 = 100.0;

/// CPU time of this process so far (every thread, user + system) in seconds, on Linux.
pub fn process_cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name, which may itself contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ').skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// Runs the benchmark on `clip`.
pub fn pipeline_bench(clip: &Path, options: &PipelineBenchOptions) -> Result<PipelineBenchReport, PipelineBenchError> {
    let path = clip.display().to_string();
    let file = std::fs::File::open(clip).map_err(|source| PipelineBenchError::Open {
        path: path.clone(),
        source,
    })?;
    let clip_err = |source| PipelineBenchError::Clip {
        path: path.clone(),
        source,
    };
    let mut reader = Reader::new(std::io::BufReader::new(file)).map_err(clip_err)?;
    let header = reader.header();
    let fps = header.fps();

    // The browser's side, untimed: every frame encoded once, a keyframe first.
    let enc_config = EncoderConfig {
        codec: options.codec,
        fps: fps.round().max(1.0) as u32,
        bitrate_kbps: options.bitrate_kbps,
        ..EncoderConfig::default()
    };
    let mut browser = new_encoder(&enc_config)?;
    let mut packets = Vec::new();
    let mut read = 0u32;
    while let Some(frame) = reader.next_frame().map_err(clip_err)? {
        let pts = Duration::from_secs(read.into()) / enc_config.fps;
        read += 1;
        if let Some(out) = browser.encode(&frame, pts, packets.is_empty())? {
            packets.push(out.data);
        }
    }
    if packets.is_empty() {
        return Err(PipelineBenchError::Empty(path));
    }

    let mut filter = options.filter.build()?;
    let mut decoder = new_decoder(options.codec)?;
    let out_config = EncoderConfig {
        keyframe_interval: options.keyframe_interval,
        ..enc_config.clone()
    };
    let mut encoder: Box<dyn VideoEncoder> = match (options.codec, options.vp8_cpu_used) {
        (VideoCodec::Vp8, Some(cpu_used)) => Box::new(Vp8Encoder::with_cpu_used(&out_config, cpu_used)?),
        _ => new_encoder(&out_config)?,
    };
    let mut check = if options.quality {
        Some(new_decoder(options.codec)?)
    } else {
        None
    };
    let (mut keyframe_ms, mut bytes, mut psnr_sum, mut psnr_n) = (Vec::new(), 0u64, 0.0, 0u32);
    let mut steadiness = SteadinessMeter::default();
    let mut cpu_start = None;
    let mut minute_of = Vec::new();
    let total_frames = options.frames.unwrap_or(packets.len() as u64) + options.warmup;
    let interval = Duration::from_secs_f64(1.0 / fps.max(1.0));
    let names = ["decode", "preprocess", "infer", "postprocess", "encode"];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut totals = Vec::new();
    let mut dropped = 0u64;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let start = Instant::now();
    for i in 0..total_frames {
        let measured = i >= options.warmup;
        let arrival = start + interval.mul_f64(i as f64);
        if let Some(wait) = arrival.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let packet = &packets[(i % packets.len() as u64) as usize];
        // The clip loops: its first frame is a keyframe, so the decoder stays in step.
        let t0 = Instant::now();
        let Some(picture) = decoder.decode(packet)? else {
            continue;
        };
        let t1 = Instant::now();
        if t1 > arrival + interval && i + 1 < total_frames {
            if measured {
                dropped += 1;
            }
            continue;
        }
        if measured && cpu_start.is_none() {
            cpu_start = Some((process_cpu_secs(), t0));
        }
        let Filtered { frame, times } = filter.apply(picture)?;
        if !options.filter_delay.is_zero() {
            std::thread::sleep(options.filter_delay);
        }
        let t2 = Instant::now();
        let out = encoder.encode(&frame, interval.mul_f64(i as f64), false)?;
        let t3 = Instant::now();
        // The check decoder sees every output from the first keyframe on, warm-up included.
        let checked = match (&out, check.as_mut()) {
            (Some(out), Some(decoder)) => decoder.decode(&out.data)?,
            _ => None,
        };
        if !measured {
            continue;
        }
        if options.quality
            && let Some(probe) = filter.probe()
        {
            steadiness.add(probe);
        }
        if let Some(out) = &out {
            bytes += out.data.len() as u64;
            if out.keyframe {
                keyframe_ms.push(ms(t3 - t2));
            }
        }
        if let Some(psnr) = checked.and_then(|picture| picture.luma_psnr(&frame)) {
            psnr_sum += psnr.min(99.0);
            psnr_n += 1;
        }
        let parts = times.unwrap_or_default();
        // Without a model the whole filter counts as postprocessing.
        let post = if times.is_some() { parts.postprocess } else { t2 - t1 };
        for (s, v) in samples
            .iter_mut()
            .zip([t1 - t0, parts.preprocess, parts.infer, post, t3 - t2])
        {
            s.push(ms(v));
        }
        totals.push(ms(t3.saturating_duration_since(arrival.min(t0))));
        minute_of.push(((i - options.warmup) as f64 / fps.max(1.0) / 60.0) as usize);
    }
    let measured = totals.len() as u64;
    let cpu_ms_per_frame = match cpu_start {
        Some((Some(before), _)) if !options.quality && measured > 0 => {
            process_cpu_secs().map(|after| (after - before) * 1000.0 / measured as f64)
        }
        _ => None,
    };
    let minutes = minute_of.last().map_or(0, |m| m + 1);
    let p99_by_minute = if minutes >= 2 {
        (0..minutes)
            .map(|m| {
                let window: Vec<f64> = totals
                    .iter()
                    .zip(&minute_of)
                    .filter(|(_, of)| **of == m)
                    .map(|(t, _)| *t)
                    .collect();
                percentiles(&window).p99
            })
            .collect()
    } else {
        Vec::new()
    };
    // The measured span, dropped frames included.
    let seconds = (measured + dropped) as f64 / fps.max(1.0);
    Ok(PipelineBenchReport {
        filter: filter.name(),
        device: filter.device().map(|d| d.to_string()),
        width: header.width,
        height: header.height,
        fps,
        frames: totals.len() as u64,
        dropped,
        stages: names
            .iter()
            .copied()
            .zip(samples.iter().map(|s| percentiles(s)))
            .collect(),
        total: percentiles(&totals),
        keyframes: (keyframe_ms.len() as u64, percentiles(&keyframe_ms)),
        kbps: if seconds > 0.0 {
            bytes as f64 * 8.0 / seconds / 1000.0
        } else {
            0.0
        },
        cpu_ms_per_frame,
        psnr_y: (psnr_n > 0).then(|| psnr_sum / f64::from(psnr_n)),
        steadiness: steadiness.result(),
        p99_by_minute,
        peak_rss_mib: peak_rss_mib(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::I420Frame;

    fn clip(frames: usize) -> tempfile_path::TempClip {
        tempfile_path::TempClip::new(frames)
    }

    /// A small clip in the system temp dir, removed on drop.
    mod tempfile_path {
        use super::*;

        pub struct TempClip(pub std::path::PathBuf);

        impl TempClip {
            pub fn new(frames: usize) -> Self {
                let path = std::env::temp_dir().join(format!("lf-bench-{}-{frames}.y4m", std::process::id()));
                let pictures = (0..frames).map(|i| I420Frame::filled(64, 48, [(16 + i * 8) as u8, 128, 128]).unwrap());
                crate::y4m::write(std::fs::File::create(&path).unwrap(), 60, pictures).unwrap();
                Self(path)
            }
        }

        impl Drop for TempClip {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn passthrough_runs_every_frame_of_the_clip_and_reports_each_stage() {
        let clip = clip(6);
        let options = PipelineBenchOptions {
            bitrate_kbps: 300,
            warmup: 0,
            quality: true,
            ..PipelineBenchOptions::new(FilterConfig::default(), VideoCodec::Vp8)
        };

        let report = pipeline_bench(&clip.0, &options).unwrap();

        assert_eq!((report.width, report.height, report.fps), (64, 48, 60.0));
        assert_eq!(report.frames + report.dropped, 6);
        let names: Vec<&str> = report.stages.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["decode", "preprocess", "infer", "postprocess", "encode"]);
        let text = report.to_string();
        assert!(
            text.starts_with("bench passthrough 64x48 @ 60 fps, device none"),
            "{text}"
        );
        assert!(text.contains("\ntotal "), "{text}");
        assert_eq!(report.keyframes.0, 1, "only the first frame is a keyframe in 6 frames");
        let psnr = report.psnr_y.expect("quality was asked for");
        assert!(psnr > 30.0, "a flat clip survives VP8 at 300 kbit/s: {psnr:.1} dB");
        assert!(report.kbps > 0.0);
        assert_eq!(report.cpu_ms_per_frame, None, "the quality check's decode would count");
    }

    #[test]
    fn process_cpu_time_grows_with_work() {
        let before = process_cpu_secs().expect("Linux reports process times");
        let mut x = 0u64;
        let start = Instant::now();
        while process_cpu_secs().unwrap() <= before {
            x = x.wrapping_add(std::hint::black_box(1));
            assert!(start.elapsed() < Duration::from_secs(60), "CPU time never moved");
        }
        assert!(x > 0);
    }

    #[test]
    fn a_missing_clip_is_named() {
        let options = PipelineBenchOptions::new(FilterConfig::default(), VideoCodec::Vp8);
        let err = pipeline_bench(Path::new("/nonexistent/clip.y4m"), &options).unwrap_err();
        assert!(
            err.to_string().starts_with("cannot open clip /nonexistent/clip.y4m:"),
            "{err}"
        );
    }
}
