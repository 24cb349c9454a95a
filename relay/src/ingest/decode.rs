//! The decoder thread: complete encoded frames arrive through a bounded queue, so the task
//! reading RTP never waits on a codec. When the queue is full the frame is dropped (counted)
//! and the reader's gate waits for the next keyframe; when decoding fails, or a picture comes
//! out larger than allowed, the thread skips until a keyframe and tells the reader to ask the
//! sender for one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::assembler::AssembledFrame;
use super::limits::{RefusalReason, SizeLimit};
use super::{DecodedFrame, FrameSink, IngestError, VideoIngestStats};
use crate::codec::VideoDecoder;
use crate::health::{self, Health, Heartbeat};

/// One frame for the decoder.
#[derive(Debug)]
pub struct DecodeJob {
    /// The bitstream and its timing.
    pub frame: AssembledFrame,
    /// When the sender captured it (NTP), if known.
    pub capture_ntp: Option<u64>,
}

enum Message {
    Decode(DecodeJob),
    /// Answered once every earlier job is done (tests wait on it).
    #[cfg(test)]
    Barrier(mpsc::Sender<()>),
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The queue is full: the decoder is behind.
    Backlog,
    /// The thread is gone (it panicked).
    Stopped,
}

/// The decoding side: decodes jobs in order, checks what comes out, hands pictures to the sink.
struct Worker<S> {
    decoder: Box<dyn VideoDecoder>,
    sink: S,
    stats: Arc<VideoIngestStats>,
    size_limit: SizeLimit,
    needs_keyframe: Arc<AtomicBool>,
    /// After a failure, frames are skipped until a keyframe restores the reference chain.
    waiting: bool,
    decoded: u64,
}

impl<S: FrameSink> Worker<S> {
    fn run(mut self, jobs: mpsc::Receiver<Message>, heartbeat: Heartbeat) {
        while let Ok(message) = jobs.recv() {
            match message {
                Message::Decode(job) => {
                    self.decode(job);
                    heartbeat.beat();
                }
                #[cfg(test)]
                Message::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    fn decode(&mut self, job: DecodeJob) {
        let DecodeJob { frame, capture_ntp } = job;
        if self.waiting && !frame.keyframe {
            VideoIngestStats::add(&self.stats.frames_skipped, 1);
            return;
        }
        match self.decoder.decode(&frame.data) {
            Ok(Some(picture)) => {
                let size = (picture.width(), picture.height());
                if let Err(refusal) = self.size_limit.check(size, RefusalReason::DecodedTooLarge) {
                    tracing::warn!(%refusal, rtp_timestamp = frame.rtp_timestamp, "decoded picture dropped");
                    self.stats.record_refusal(refusal.reason);
                    self.fail();
                    return;
                }
                self.waiting = false;
                VideoIngestStats::add(&self.stats.frames_decoded, 1);
                if frame.keyframe {
                    VideoIngestStats::add(&self.stats.keyframes_decoded, 1);
                }
                let index = self.decoded;
                self.decoded += 1;
                self.sink.on_frame(DecodedFrame {
                    frame: picture,
                    rtp_timestamp: frame.rtp_timestamp,
                    keyframe: frame.keyframe,
                    arrival: frame.first_arrival,
                    decoded_at: Instant::now(),
                    index,
                    capture_ntp,
                });
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(%err, rtp_timestamp = frame.rtp_timestamp, "video decode failed; waiting for a keyframe");
                VideoIngestStats::add(&self.stats.decode_errors, 1);
                self.fail();
            }
        }
    }

    fn fail(&mut self) {
        self.waiting = true;
        self.needs_keyframe.store(true, Ordering::Release);
    }
}

/// The decoder thread and the sending end of its queue. Dropping it (or [`finish`]) lets the
/// thread decode what is queued and end.
///
/// [`finish`]: DecoderThread::finish
pub struct DecoderThread {
    jobs: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
    needs_keyframe: Arc<AtomicBool>,
}

impl DecoderThread {
    /// Starts the `video-decode` thread with a queue of `capacity` frames. Its stage is
    /// `decoder` in `health`; a panic there is reported to `health` and ends the thread.
    pub fn spawn(
        decoder: Box<dyn VideoDecoder>,
        sink: impl FrameSink + 'static,
        stats: Arc<VideoIngestStats>,
        size_limit: SizeLimit,
        capacity: usize,
        health: &Health,
    ) -> Result<Self, IngestError> {
        let (tx, rx) = mpsc::sync_channel(capacity.max(1));
        let needs_keyframe = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            decoder,
            sink,
            stats,
            size_limit,
            needs_keyframe: Arc::clone(&needs_keyframe),
            waiting: false,
            decoded: 0,
        };
        let registry = health.clone();
        let thread = health
            .spawn_thread("video-decode", move || {
                let heartbeat = registry.register(health::DECODER);
                worker.run(rx, heartbeat);
            })
            .map_err(IngestError::Thread)?;
        Ok(Self {
            jobs: Some(tx),
            thread: Some(thread),
            needs_keyframe,
        })
    }

    /// Queues a frame without waiting.
    pub fn try_submit(&self, job: DecodeJob) -> Result<(), SubmitError> {
        let jobs = self.jobs.as_ref().ok_or(SubmitError::Stopped)?;
        match jobs.try_send(Message::Decode(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SubmitError::Backlog),
            Err(TrySendError::Disconnected(_)) => Err(SubmitError::Stopped),
        }
    }

    /// Whether the decoder failed since the last call (the reader should wait for a keyframe
    /// and ask for one).
    pub fn take_keyframe_need(&self) -> bool {
        self.needs_keyframe.swap(false, Ordering::AcqRel)
    }

    /// Closes the queue and waits until the thread decoded what was queued and ended. Blocks:
    /// call it off the async runtime.
    pub fn finish(mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            // A panic was already caught and reported by the thread's supervisor.
            let _ = thread.join();
        }
    }

    /// Waits until every job queued so far is done.
    #[cfg(test)]
    pub fn settle(&self) {
        let (done, wait) = mpsc::channel();
        if let Some(jobs) = &self.jobs
            && jobs.send(Message::Barrier(done)).is_ok()
        {
            let _ = wait.recv();
        }
    }
}
