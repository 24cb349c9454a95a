//! Backdrop pictures: where a filter may read them from, how much of them it reads, and their
//! one decoding (in the caller's thread: at startup, or the blocking task of `PATCH /filter`,
//! never the filter thread).
//!
//! Two origins name pictures. The startup configuration (`--filter-params`, the YAML file) is
//! the operator's: any path is read, relative ones inside the assets directory when there is
//! one. A live change (`PATCH /filter`) comes from the network: its name must be relative,
//! lie inside the assets directory once symlinks are resolved, and name a regular file; without
//! an assets directory no live change may name a picture. Whatever fails about a live name that
//! depends on the file system is answered with one text, so answers never tell which paths
//! exist. Every read is bounded (bytes, then pixels before decoding), and a FIFO or device never
//! blocks or streams: files are opened non-blocking and must be regular.

use std::fmt;
use std::io::{Cursor, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

pub use livefilter_contract::config::ImageLimits;

/// Who names a picture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The startup configuration (the operator).
    Config,
    /// A live change from the network (`PATCH /filter`).
    Live,
}

/// Why a picture cannot be used. Live refusals never depend on what exists outside the assets
/// directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssetError {
    /// A live change named a picture it may not use (or that is not there).
    #[error("image {name:?} is not an allowed asset: {why}")]
    NotAllowed { name: String, why: &'static str },
    /// The startup configuration names a file that cannot be read.
    #[error("image {name:?} cannot be read: {detail}")]
    Unreadable { name: String, detail: String },
    /// The file is larger than `max_bytes`.
    #[error("image {name:?} is larger than {limit} bytes")]
    TooLarge { name: String, limit: u64 },
    /// The picture is larger than `max_width` x `max_height`.
    #[error("image {name:?} is larger than {max_width}x{max_height} pixels")]
    TooManyPixels {
        name: String,
        max_width: u32,
        max_height: u32,
    },
    /// Not a PNG or JPEG picture.
    #[error("image {name:?} is not a PNG or JPEG picture: {detail}")]
    Undecodable { name: String, detail: String },
}

/// The live refusal for everything that depends on the file system.
const NOT_IN_ASSETS: &str = "no such picture in the assets directory";

/// A decoded backdrop picture, shared (not copied) between the parameters and the filter.
#[derive(Clone)]
pub struct Backdrop {
    name: PathBuf,
    rgb: Arc<image::RgbImage>,
}

impl Backdrop {
    /// Wraps an already decoded picture.
    pub fn new(name: PathBuf, rgb: image::RgbImage) -> Self {
        Self {
            name,
            rgb: Arc::new(rgb),
        }
    }

    /// The name it was asked for by.
    pub fn name(&self) -> &Path {
        &self.name
    }

    /// The pixels.
    pub fn rgb(&self) -> &image::RgbImage {
        &self.rgb
    }
}

/// The same decoding (not merely equal pixels): cheap, and what "unchanged" means to a filter.
impl PartialEq for Backdrop {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.rgb, &other.rgb)
    }
}

impl fmt::Debug for Backdrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Backdrop({}, {}x{})",
            self.name.display(),
            self.rgb.width(),
            self.rgb.height()
        )
    }
}

/// Where pictures may come from and how large they may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assets {
    dir: Option<PathBuf>,
    limits: ImageLimits,
}

impl Assets {
    /// Pictures inside `dir` (none: live changes may not name pictures), within `limits`.
    pub fn new(dir: Option<PathBuf>, limits: ImageLimits) -> Self {
        Self { dir, limits }
    }

    /// Reads and decodes the picture `name` for `origin`.
    pub fn load(&self, name: &Path, origin: Origin) -> Result<Backdrop, AssetError> {
        let shown = name.display().to_string();
        let path = self.resolve(name, origin)?;
        // Detail that could tell the caller what exists stays in the log for live changes.
        let hidden = |detail: String| {
            tracing::warn!(image = %shown, path = %path.display(), %detail, "backdrop picture refused");
            match origin {
                Origin::Live => AssetError::NotAllowed {
                    name: shown.clone(),
                    why: NOT_IN_ASSETS,
                },
                Origin::Config => AssetError::Unreadable {
                    name: shown.clone(),
                    detail,
                },
            }
        };
        // Non-blocking: opening a FIFO must not wait for a writer.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| hidden(e.to_string()))?;
        let meta = file.metadata().map_err(|e| hidden(e.to_string()))?;
        if !meta.is_file() {
            return Err(hidden("not a regular file".to_owned()));
        }
        let max = self.limits.max_bytes;
        let too_large = || AssetError::TooLarge {
            name: shown.clone(),
            limit: max,
        };
        if meta.len() > max {
            return Err(too_large());
        }
        let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
        // The size may change after the check: read at most one byte more than allowed.
        file.take(max.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| hidden(e.to_string()))?;
        if bytes.len() as u64 > max {
            return Err(too_large());
        }
        let rgb = decode(&bytes, &self.limits, &shown)?;
        Ok(Backdrop::new(name.to_path_buf(), rgb))
    }

    /// The file `name` means for `origin`, or why it may not be used.
    fn resolve(&self, name: &Path, origin: Origin) -> Result<PathBuf, AssetError> {
        let shown = || name.display().to_string();
        let refuse = |why: &'static str| AssetError::NotAllowed { name: shown(), why };
        match origin {
            Origin::Config => Ok(match &self.dir {
                Some(dir) if name.is_relative() => dir.join(name),
                _ => name.to_path_buf(),
            }),
            Origin::Live => {
                let Some(dir) = &self.dir else {
                    return Err(refuse(
                        "the relay has no assets directory for live changes (--assets-dir)",
                    ));
                };
                if !is_plain_relative(name) {
                    return Err(refuse("name a file relative to the assets directory, without \"..\""));
                }
                let hidden = |detail: String| {
                    tracing::warn!(image = %shown(), %detail, "backdrop picture refused");
                    refuse(NOT_IN_ASSETS)
                };
                let root = dir
                    .canonicalize()
                    .map_err(|e| hidden(format!("assets directory {}: {e}", dir.display())))?;
                // Resolves symlinks: what it names must still be inside the directory.
                let path = root.join(name).canonicalize().map_err(|e| hidden(e.to_string()))?;
                if !path.starts_with(&root) || path == root {
                    return Err(hidden(format!(
                        "resolves to {} outside the assets directory",
                        path.display()
                    )));
                }
                Ok(path)
            }
        }
    }
}

/// Relative, non-empty, and made only of names (no `..`, no root, no prefix).
fn is_plain_relative(name: &Path) -> bool {
    let mut names = 0;
    for c in name.components() {
        match c {
            Component::Normal(_) => names += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    names > 0
}

/// Decodes PNG or JPEG `bytes`, refusing pictures over the limits before their pixels are
/// allocated.
fn decode(bytes: &[u8], limits: &ImageLimits, name: &str) -> Result<image::RgbImage, AssetError> {
    let undecodable = |detail: String| AssetError::Undecodable {
        name: name.to_owned(),
        detail,
    };
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(e.to_string()))?;
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    // Room for the decoded picture plus the decoder's own buffers, and no more.
    image_limits.max_alloc = Some(u64::from(limits.max_width) * u64::from(limits.max_height) * 4 * 2);
    reader.limits(image_limits);
    match reader.decode() {
        Ok(img) => Ok(img.to_rgb8()),
        Err(image::ImageError::Limits(_)) => Err(AssetError::TooManyPixels {
            name: name.to_owned(),
            max_width: limits.max_width,
            max_height: limits.max_height,
        }),
        Err(e) => Err(undecodable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "livefilter-assets-{tag}-{}-{}",
                std::process::id(),
                rand::random::<u32>()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn png(&self, name: &str, w: u32, h: u32) -> PathBuf {
            let path = self.0.join(name);
            image::RgbImage::from_pixel(w, h, image::Rgb([10, 200, 30]))
                .save(&path)
                .unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn assets(dir: &Dir) -> Assets {
        Assets::new(Some(dir.0.join("assets")), ImageLimits::default())
    }

    fn setup(tag: &str) -> Dir {
        let d = Dir::new(tag);
        std::fs::create_dir_all(d.0.join("assets")).unwrap();
        d
    }

    fn not_allowed(name: &str, why: &'static str) -> AssetError {
        AssetError::NotAllowed {
            name: name.to_owned(),
            why,
        }
    }

    #[test]
    fn a_picture_in_the_assets_directory_is_decoded_once_into_rgb() {
        let d = setup("ok");
        d.png("assets/beach.png", 8, 6);

        let b = assets(&d).load(Path::new("beach.png"), Origin::Live).unwrap();

        assert_eq!(b.rgb().dimensions(), (8, 6));
        assert_eq!(b.rgb().get_pixel(3, 3).0, [10, 200, 30]);
        assert_eq!(b.name(), Path::new("beach.png"));
    }

    #[test]
    fn live_names_outside_the_directory_get_the_same_answer_whether_or_not_they_exist() {
        let d = setup("outside");
        let secret = d.png("secret.png", 4, 4);
        std::os::unix::fs::symlink(&secret, d.0.join("assets/link.png")).unwrap();
        std::os::unix::fs::symlink(d.0.join("missing.png"), d.0.join("assets/dangling.png")).unwrap();
        let a = assets(&d);

        let existing = a.load(Path::new("link.png"), Origin::Live).unwrap_err();
        let dangling = a.load(Path::new("dangling.png"), Origin::Live).unwrap_err();
        let missing = a.load(Path::new("nothing.png"), Origin::Live).unwrap_err();

        assert_eq!(existing, not_allowed("link.png", NOT_IN_ASSETS));
        assert_eq!(dangling, not_allowed("dangling.png", NOT_IN_ASSETS));
        assert_eq!(missing, not_allowed("nothing.png", NOT_IN_ASSETS));
        assert_eq!(
            existing.to_string(),
            "image \"link.png\" is not an allowed asset: no such picture in the assets directory"
        );
    }

    #[test]
    fn live_absolute_and_parent_names_are_refused_without_looking() {
        let d = setup("lexical");
        let a = assets(&d);
        let why = "name a file relative to the assets directory, without \"..\"";
        for name in ["/etc/passwd", "../secret.png", "a/../../b.png", "", "."] {
            assert_eq!(
                a.load(Path::new(name), Origin::Live).unwrap_err(),
                not_allowed(name, why),
                "{name}"
            );
        }
    }

    #[test]
    fn without_an_assets_directory_live_changes_cannot_name_pictures() {
        let a = Assets::new(None, ImageLimits::default());
        let err = a.load(Path::new("beach.png"), Origin::Live).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image \"beach.png\" is not an allowed asset: the relay has no assets directory for live changes (--assets-dir)"
        );
    }

    #[test]
    fn a_device_or_directory_is_refused_without_reading_it() {
        let d = setup("device");
        std::os::unix::fs::symlink("/dev/zero", d.0.join("assets/zero.png")).unwrap();
        std::fs::create_dir(d.0.join("assets/sub")).unwrap();
        let config = Assets::new(None, ImageLimits::default());

        let err = config.load(Path::new("/dev/zero"), Origin::Config).unwrap_err();
        assert_eq!(
            err,
            AssetError::Unreadable {
                name: "/dev/zero".into(),
                detail: "not a regular file".into()
            }
        );
        assert_eq!(
            assets(&d).load(Path::new("zero.png"), Origin::Live).unwrap_err(),
            not_allowed("zero.png", NOT_IN_ASSETS)
        );
        assert_eq!(
            assets(&d).load(Path::new("sub"), Origin::Live).unwrap_err(),
            not_allowed("sub", NOT_IN_ASSETS)
        );
    }

    #[test]
    fn a_fifo_is_refused_at_once_instead_of_waiting_for_a_writer() {
        let d = setup("fifo");
        let fifo = d.0.join("assets/pipe.png");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());

        let live = assets(&d).load(Path::new("pipe.png"), Origin::Live).unwrap_err();
        let config = assets(&d).load(&fifo, Origin::Config).unwrap_err();

        assert_eq!(live, not_allowed("pipe.png", NOT_IN_ASSETS));
        assert!(matches!(config, AssetError::Unreadable { ref detail, .. } if detail == "not a regular file"));
    }

    #[test]
    fn files_over_the_byte_limit_are_refused_before_decoding() {
        let d = setup("bytes");
        d.png("assets/big.png", 64, 64);
        let a = Assets::new(
            Some(d.0.join("assets")),
            ImageLimits {
                max_bytes: 50,
                ..ImageLimits::default()
            },
        );
        assert_eq!(
            a.load(Path::new("big.png"), Origin::Live).unwrap_err(),
            AssetError::TooLarge {
                name: "big.png".into(),
                limit: 50
            }
        );
    }

    #[test]
    fn pictures_over_the_pixel_limit_are_refused_before_their_pixels_are_allocated() {
        let d = setup("pixels");
        d.png("assets/wide.png", 300, 20);
        let a = Assets::new(
            Some(d.0.join("assets")),
            ImageLimits {
                max_width: 256,
                max_height: 256,
                ..ImageLimits::default()
            },
        );
        assert_eq!(
            a.load(Path::new("wide.png"), Origin::Live).unwrap_err().to_string(),
            "image \"wide.png\" is larger than 256x256 pixels"
        );
    }

    #[test]
    fn a_file_that_is_not_a_picture_is_named_as_such() {
        let d = setup("text");
        std::fs::write(d.0.join("assets/notes.png"), b"hello").unwrap();
        let err = assets(&d).load(Path::new("notes.png"), Origin::Live).unwrap_err();
        assert!(matches!(err, AssetError::Undecodable { .. }), "{err}");
    }

    #[test]
    fn the_startup_configuration_may_name_any_path_and_relative_ones_are_in_the_assets_directory() {
        let d = setup("config");
        let outside = d.png("outside.png", 2, 2);
        d.png("assets/inside.png", 3, 3);
        let a = assets(&d);

        assert_eq!(a.load(&outside, Origin::Config).unwrap().rgb().width(), 2);
        assert_eq!(
            a.load(Path::new("inside.png"), Origin::Config).unwrap().rgb().width(),
            3
        );
    }
}
