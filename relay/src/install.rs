//! Where the relay finds what it ships with when the configuration names nothing: the models
//! and the ONNX Runtime library. A checkout (`models/`, `.cache/onnxruntime/`), the directory of
//! the executable, and the standard install prefixes are looked at in that order, so that
//! `livefilter-relay serve` works from the checkout, from an unpacked release, and in the images
//! without any environment variable.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};

/// The environment variable naming the directory of the shipped models.
pub const MODELS_DIR_ENV: &str = "LIVEFILTER_MODELS_DIR";
/// The environment variable naming the ONNX Runtime library.
pub const ORT_LIBRARY_ENV: &str = "ORT_DYLIB_PATH";
/// The library name handed to the loader's search path when no file is found.
pub const ORT_LIBRARY_NAME: &str = "libonnxruntime.so";

/// The standard install prefixes, most specific first.
const PREFIXES: [&str; 2] = ["/usr/local", "/usr"];

/// Where models are looked for, in order: `$LIVEFILTER_MODELS_DIR` (alone when set), else
/// `./models`, `<exe dir>/models`, `<exe dir>/../share/livefilter/models` and
/// `<prefix>/share/livefilter/models`.
pub fn model_dirs() -> Vec<PathBuf> {
    if let Some(dir) = env_path(MODELS_DIR_ENV) {
        return vec![dir];
    }
    let mut dirs = vec![PathBuf::from("models")];
    if let Some(exe) = exe_dir() {
        dirs.push(exe.join("models"));
        dirs.push(exe.join("../share/livefilter/models"));
    }
    dirs.extend(PREFIXES.iter().map(|p| Path::new(p).join("share/livefilter/models")));
    dirs
}

/// Where the ONNX Runtime library is looked for, in order: `$ORT_DYLIB_PATH` (alone when set),
/// else `.cache/onnxruntime/` (what `scripts/setup.sh` installs), the executable's directory,
/// `<exe dir>/../lib/livefilter/` and `<prefix>/lib/livefilter/`.
pub fn onnxruntime_candidates() -> Vec<PathBuf> {
    if let Some(path) = env_path(ORT_LIBRARY_ENV) {
        return vec![path];
    }
    let mut files = vec![Path::new(".cache/onnxruntime").join(ORT_LIBRARY_NAME)];
    if let Some(exe) = exe_dir() {
        files.push(exe.join(ORT_LIBRARY_NAME));
        files.push(exe.join("../lib/livefilter").join(ORT_LIBRARY_NAME));
    }
    files.extend(
        PREFIXES
            .iter()
            .map(|p| Path::new(p).join("lib/livefilter").join(ORT_LIBRARY_NAME)),
    );
    files
}

/// The first of `candidates` for which `exists` holds.
pub fn first_existing(candidates: &[PathBuf], exists: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    candidates.iter().find(|p| exists(p)).cloned()
}

/// The places looked at, for an error message.
pub fn looked_in(candidates: &[PathBuf]) -> String {
    candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|s| !s.is_empty()).map(PathBuf::from)
}

fn exe_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_candidate_that_exists_is_chosen() {
        let candidates = vec![PathBuf::from("/a"), PathBuf::from("/b"), PathBuf::from("/c")];

        let found = first_existing(&candidates, |p| p != Path::new("/a"));

        assert_eq!(found, Some(PathBuf::from("/b")));
        assert_eq!(first_existing(&candidates, |_| false), None);
    }

    #[test]
    fn the_checkout_comes_before_the_install_prefixes() {
        // Without the variables (the test environment may set them: only check the order).
        let dirs = model_dirs();
        if std::env::var_os(MODELS_DIR_ENV).is_none() {
            assert_eq!(dirs[0], PathBuf::from("models"));
            assert_eq!(dirs.last(), Some(&PathBuf::from("/usr/share/livefilter/models")));
        } else {
            assert_eq!(dirs.len(), 1, "a set variable is the only place looked at");
        }
    }
}
