//! YUV4MPEG2 (`.y4m`) clips, 4:2:0 only: read for `bench --input`, written by `make-clip` (a
//! still picture panned slowly, for benchmarks and the browser's fake camera).

use std::io::{BufRead, Write};

use crate::frame::{FrameError, I420Frame};

/// Why a clip cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum Y4mError {
    /// Reading failed.
    #[error("reading the clip: {0}")]
    Io(#[from] std::io::Error),
    /// The stream header is not YUV4MPEG2 or lacks a size.
    #[error("not a YUV4MPEG2 clip: {0}")]
    Header(String),
    /// A colour space other than 4:2:0.
    #[error("colour space {0} is not supported (only 4:2:0: C420, C420jpeg, C420paldv, C420mpeg2)")]
    Colorspace(String),
    /// A frame is cut short or its marker is wrong.
    #[error("frame {index}: {detail}")]
    Frame { index: u64, detail: String },
    /// The planes do not form a frame.
    #[error(transparent)]
    Planes(#[from] FrameError),
}

/// The stream header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Frame rate numerator.
    pub fps_num: u32,
    /// Frame rate denominator.
    pub fps_den: u32,
}

impl Header {
    /// Frames per second.
    pub fn fps(&self) -> f64 {
        f64::from(self.fps_num) / f64::from(self.fps_den.max(1))
    }
}

/// Reads frames one by one.
pub struct Reader<R> {
    input: R,
    header: Header,
    index: u64,
}

impl<R: BufRead> Reader<R> {
    /// Reads the stream header.
    pub fn new(mut input: R) -> Result<Self, Y4mError> {
        let mut line = Vec::new();
        input.read_until(b'\n', &mut line)?;
        let text = String::from_utf8_lossy(&line);
        let mut parts = text.trim_end().split(' ');
        if parts.next() != Some("YUV4MPEG2") {
            return Err(Y4mError::Header(format!(
                "starts with {:?}",
                text.chars().take(16).collect::<String>()
            )));
        }
        let (mut width, mut height, mut fps) = (None, None, (30, 1));
        for p in parts {
            let (tag, value) = p.split_at(p.chars().next().map_or(0, char::len_utf8));
            match tag {
                "W" => width = value.parse().ok(),
                "H" => height = value.parse().ok(),
                "F" => {
                    if let Some((n, d)) = value.split_once(':')
                        && let (Ok(n), Ok(d)) = (n.parse(), d.parse())
                        && n > 0
                        && d > 0
                    {
                        fps = (n, d);
                    }
                }
                "C" if !value.starts_with("420") => return Err(Y4mError::Colorspace(value.to_owned())),
                _ => {}
            }
        }
        let (Some(width), Some(height)) = (width, height) else {
            return Err(Y4mError::Header("no W or H".into()));
        };
        Ok(Self {
            input,
            header: Header {
                width,
                height,
                fps_num: fps.0,
                fps_den: fps.1,
            },
            index: 0,
        })
    }

    /// The stream header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// The next frame, or `None` at the end.
    pub fn next_frame(&mut self) -> Result<Option<I420Frame>, Y4mError> {
        let mut marker = Vec::new();
        if self.input.read_until(b'\n', &mut marker)? == 0 {
            return Ok(None);
        }
        let index = self.index;
        if !marker.starts_with(b"FRAME") {
            return Err(Y4mError::Frame {
                index,
                detail: "missing FRAME marker".into(),
            });
        }
        let (w, h) = (self.header.width as usize, self.header.height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut read = |n: usize| -> Result<Vec<u8>, Y4mError> {
            let mut buf = vec![0u8; n];
            self.input.read_exact(&mut buf).map_err(|e| Y4mError::Frame {
                index,
                detail: format!("cut short: {e}"),
            })?;
            Ok(buf)
        };
        let (y, u, v) = (read(w * h)?, read(cw * ch)?, read(cw * ch)?);
        self.index += 1;
        Ok(Some(I420Frame::from_planes(
            self.header.width,
            self.header.height,
            y,
            u,
            v,
        )?))
    }
}

/// Writes a clip.
pub fn write<W: Write>(mut out: W, fps: u32, frames: impl IntoIterator<Item = I420Frame>) -> std::io::Result<()> {
    let mut frames = frames.into_iter().peekable();
    let Some(first) = frames.peek() else { return Ok(()) };
    writeln!(
        out,
        "YUV4MPEG2 W{} H{} F{fps}:1 Ip A1:1 C420jpeg",
        first.width(),
        first.height()
    )?;
    for f in frames {
        out.write_all(b"FRAME\n")?;
        out.write_all(f.y())?;
        out.write_all(f.u())?;
        out.write_all(f.v())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_clip_reads_back_frame_for_frame() {
        let frames = vec![
            I420Frame::filled(6, 4, [10, 20, 30]).unwrap(),
            I420Frame::filled(6, 4, [40, 50, 60]).unwrap(),
        ];
        let mut bytes = Vec::new();
        write(&mut bytes, 25, frames.clone()).unwrap();

        let mut reader = Reader::new(bytes.as_slice()).unwrap();

        assert_eq!(
            reader.header(),
            Header {
                width: 6,
                height: 4,
                fps_num: 25,
                fps_den: 1
            }
        );
        assert_eq!(reader.next_frame().unwrap(), Some(frames[0].clone()));
        assert_eq!(reader.next_frame().unwrap(), Some(frames[1].clone()));
        assert_eq!(reader.next_frame().unwrap(), None);
    }

    #[test]
    fn other_colour_spaces_and_garbage_are_refused_by_name() {
        let err = Reader::new(&b"YUV4MPEG2 W4 H4 F30:1 C444\n"[..]).err().unwrap();
        assert_eq!(
            err.to_string(),
            "colour space 444 is not supported (only 4:2:0: C420, C420jpeg, C420paldv, C420mpeg2)"
        );
        assert!(Reader::new(&b"\x89PNG\r\n"[..]).is_err());
    }

    #[test]
    fn a_truncated_frame_names_its_index() {
        let mut reader = Reader::new(&b"YUV4MPEG2 W4 H4 F30:1\nFRAME\n\x00\x00"[..]).unwrap();
        let err = reader.next_frame().unwrap_err().to_string();
        assert!(err.starts_with("frame 0: cut short"), "{err}");
    }
}
