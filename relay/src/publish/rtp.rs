//! Output RTP numbering: maps a source's timestamps and sequence numbers onto an outgoing
//! stream that stays continuous across source changes (a new browser session, a new test
//! pattern), so viewers never see time run backwards.

use std::time::Instant;

/// Where an outgoing packet's media time comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaTime {
    /// Changes whenever the source restarts (its timestamps then start somewhere new).
    pub epoch: u64,
    /// The source's RTP timestamp, in the stream's clock rate.
    pub rtp_timestamp: u32,
}

#[derive(Clone, Copy, Debug)]
struct Anchor {
    epoch: u64,
    source: u32,
    output: u32,
}

/// Rebases source timestamps onto the output stream.
#[derive(Debug)]
pub struct TimestampRebase {
    clock_rate: u32,
    anchor: Option<Anchor>,
    last: Option<(u32, Instant)>,
    initial: u32,
}

impl TimestampRebase {
    /// A rebase for a `clock_rate` Hz stream whose first output timestamp is `initial`.
    pub fn new(clock_rate: u32, initial: u32) -> Self {
        Self {
            clock_rate,
            anchor: None,
            last: None,
            initial,
        }
    }

    /// The output timestamp for `time`, sent at `now`. Within an epoch the source's spacing is
    /// kept exactly; a new epoch continues from the last output by the wall time that passed.
    pub fn map(&mut self, time: MediaTime, now: Instant) -> u32 {
        let anchor = match self.anchor {
            Some(a) if a.epoch == time.epoch => a,
            _ => {
                let output = match self.last {
                    Some((last, at)) => {
                        let elapsed = now.saturating_duration_since(at).as_secs_f64();
                        // At least one tick, so the new source never repeats the last timestamp.
                        last.wrapping_add(((elapsed * f64::from(self.clock_rate)).round() as u32).max(1))
                    }
                    None => self.initial,
                };
                let a = Anchor {
                    epoch: time.epoch,
                    source: time.rtp_timestamp,
                    output,
                };
                self.anchor = Some(a);
                a
            }
        };
        let out = anchor
            .output
            .wrapping_add(time.rtp_timestamp.wrapping_sub(anchor.source));
        self.last = Some((out, now));
        out
    }
}

/// Rebases source sequence numbers onto the output stream (losses stay visible as gaps).
#[derive(Debug)]
pub struct SequenceRebase {
    anchor: Option<(u64, u16, u16)>,
    last: u16,
}

impl SequenceRebase {
    /// A rebase whose first output sequence number is `initial`.
    pub fn new(initial: u16) -> Self {
        Self {
            anchor: None,
            last: initial.wrapping_sub(1),
        }
    }

    /// The output sequence number for source number `seq` of `epoch`.
    pub fn map(&mut self, epoch: u64, seq: u16) -> u16 {
        let (_, source, output) = match self.anchor {
            Some(a) if a.0 == epoch => a,
            _ => {
                let a = (epoch, seq, self.last.wrapping_add(1));
                self.anchor = Some(a);
                a
            }
        };
        let out = output.wrapping_add(seq.wrapping_sub(source));
        self.last = out;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn within_an_epoch_source_spacing_is_kept_across_wraparound() {
        let t = Instant::now();
        let mut r = TimestampRebase::new(90_000, 1000);
        assert_eq!(
            r.map(
                MediaTime {
                    epoch: 1,
                    rtp_timestamp: u32::MAX - 1499
                },
                t
            ),
            1000
        );
        assert_eq!(
            r.map(
                MediaTime {
                    epoch: 1,
                    rtp_timestamp: 1500
                },
                t
            ),
            4000
        );
    }

    #[test]
    fn a_new_epoch_continues_from_the_last_output_by_elapsed_wall_time() {
        let t = Instant::now();
        let mut r = TimestampRebase::new(90_000, 0);
        r.map(
            MediaTime {
                epoch: 1,
                rtp_timestamp: 50,
            },
            t,
        );
        let next = r.map(
            MediaTime {
                epoch: 2,
                rtp_timestamp: 7_000_000,
            },
            t + Duration::from_millis(500),
        );
        assert_eq!(next, 45_000);
        assert_eq!(
            r.map(
                MediaTime {
                    epoch: 2,
                    rtp_timestamp: 7_003_000
                },
                t + Duration::from_millis(533)
            ),
            48_000
        );
    }

    #[test]
    fn sequence_numbers_keep_gaps_and_continue_after_a_new_epoch() {
        let mut s = SequenceRebase::new(100);
        assert_eq!(s.map(1, 5000), 100);
        assert_eq!(s.map(1, 5002), 102);
        assert_eq!(s.map(2, 9), 103);
        assert_eq!(s.map(2, 10), 104);
    }
}
