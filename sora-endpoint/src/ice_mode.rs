//! How the endpoint does ICE: ICE-lite, as Sora does (the default), or full ICE.

use std::fmt;
use std::str::FromStr;

/// The endpoint's ICE implementation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IceMode {
    /// ICE-lite, like Sora: `a=ice-lite` in every offer and answer, host candidates only, the
    /// client is the controlling agent. The default, so that the relay is tested against the
    /// ICE behaviour of the real SFU.
    #[default]
    Lite,
    /// Full ICE (controlled when answering, controlling when offering): the endpoint's former
    /// behaviour, kept for runs of the official SDKs that want to compare both.
    Full,
}

impl IceMode {
    /// Whether this is ICE-lite.
    pub fn is_lite(self) -> bool {
        self == IceMode::Lite
    }
}

impl fmt::Display for IceMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IceMode::Lite => "lite",
            IceMode::Full => "full",
        })
    }
}

/// An `--ice-mode` value that is neither `lite` nor `full`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown ICE mode {0:?} (expected lite or full)")]
pub struct UnknownIceMode(String);

impl FromStr for IceMode {
    type Err = UnknownIceMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lite" | "ice-lite" => Ok(IceMode::Lite),
            "full" => Ok(IceMode::Full),
            _ => Err(UnknownIceMode(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_lite_is_the_default_and_both_modes_parse() {
        assert_eq!(IceMode::default(), IceMode::Lite);
        assert_eq!("lite".parse(), Ok(IceMode::Lite));
        assert_eq!("FULL".parse(), Ok(IceMode::Full));
        assert!("half".parse::<IceMode>().is_err());
        assert_eq!(IceMode::Full.to_string(), "full");
    }
}
