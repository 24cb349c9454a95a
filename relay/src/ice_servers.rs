//! STUN/TURN servers for the sender page (`ice.servers`): checked and resolved once at startup
//! (secret files read), then turned into the `RTCIceServer` list each `/api/info` answer
//! carries. With a TURN shared secret (coturn `use-auth-secret`, the "TURN REST API") every
//! answer carries its own time-limited credentials, so a leaked one stops working by itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use livefilter_contract::config::IceServerConfig;
use serde_json::{Value, json};
use sha1::Sha1;

/// How long time-limited credentials last unless configured: a day, as coturn's REST API
/// documentation suggests; the TURN server refuses allocation refreshes after it, so it must
/// outlast the longest stream.
pub const DEFAULT_CREDENTIAL_TTL: Duration = Duration::from_secs(24 * 3600);
/// The name in time-limited usernames (`<expiry>:<name>`) when none is configured.
pub const DEFAULT_REST_NAME: &str = "livefilter";
/// Shortest and longest accepted credential lifetime, in seconds.
const TTL_RANGE_SECS: std::ops::RangeInclusive<u64> = 60..=7 * 24 * 3600;

/// A server entry that cannot be used, naming the entry (`ice.servers[N]`) and the problem.
#[derive(Debug, thiserror::Error)]
pub enum IceServerError {
    /// The entry lists no URL.
    #[error("ice.servers[{index}]: needs at least one stun:, turn: or turns: URL")]
    NoUrls { index: usize },
    /// A URL of another scheme.
    #[error("ice.servers[{index}]: {url:?} is not a stun:, stuns:, turn: or turns: URL")]
    BadUrl { index: usize, url: String },
    /// Credentials missing, half given or given twice.
    #[error("ice.servers[{index}]: {detail}")]
    Credentials { index: usize, detail: &'static str },
    /// The credential lifetime is out of range.
    #[error("ice.servers[{index}]: credential_ttl_secs = {value} is out of range (60..=604800)")]
    Ttl { index: usize, value: u64 },
    /// A secret file could not be read, or is empty.
    #[error("ice.servers[{index}]: cannot read {}: {detail}", path.display())]
    Read {
        index: usize,
        path: PathBuf,
        detail: String,
    },
}

/// What the page authenticates to a server with.
#[derive(Clone)]
enum Credentials {
    /// STUN: nothing.
    None,
    /// A fixed TURN username and password.
    Fixed { username: String, credential: String },
    /// Made per answer from the TURN server's shared secret.
    TimeLimited {
        secret: String,
        name: String,
        ttl: Duration,
    },
}

/// One resolved entry.
#[derive(Clone)]
struct IceServer {
    urls: Vec<String>,
    credentials: Credentials,
}

/// The resolved `ice.servers`. Its `Debug` names the URLs only, never a secret.
#[derive(Clone, Default)]
pub struct IceServers(Vec<IceServer>);

impl std::fmt::Debug for IceServers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|s| &s.urls)).finish()
    }
}

/// Checks every entry without reading files: URLs, which credentials go together, lifetimes.
pub fn validate(servers: &[IceServerConfig]) -> Result<(), IceServerError> {
    servers.iter().enumerate().try_for_each(|(index, s)| check(index, s))
}

fn check(index: usize, s: &IceServerConfig) -> Result<(), IceServerError> {
    if s.urls.is_empty() {
        return Err(IceServerError::NoUrls { index });
    }
    let mut turn = false;
    for url in &s.urls {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "stun" | "stuns" => {}
            "turn" | "turns" => turn = true,
            _ => {
                return Err(IceServerError::BadUrl {
                    index,
                    url: url.clone(),
                });
            }
        }
    }
    let bad = |detail| Err(IceServerError::Credentials { index, detail });
    let fixed = s.credential.is_some() || s.credential_file.is_some();
    let secret = s.auth_secret.is_some() || s.auth_secret_file.is_some();
    if s.credential.is_some() && s.credential_file.is_some() {
        return bad("credential and credential_file exclude each other");
    }
    if s.auth_secret.is_some() && s.auth_secret_file.is_some() {
        return bad("auth_secret and auth_secret_file exclude each other");
    }
    if fixed && secret {
        return bad("a fixed credential and an auth secret exclude each other");
    }
    if fixed && s.username.is_none() {
        return bad("a fixed credential needs its username");
    }
    // Browsers refuse a turn: URL without a username and password (InvalidAccessError).
    if turn && !fixed && !secret {
        return bad("turn: URLs need credentials (username with credential, or auth_secret)");
    }
    if s.credential_ttl_secs.is_some() && !secret {
        return bad("credential_ttl_secs applies only with auth_secret");
    }
    if let Some(value) = s.credential_ttl_secs
        && !TTL_RANGE_SECS.contains(&value)
    {
        return Err(IceServerError::Ttl { index, value });
    }
    Ok(())
}

/// A secret from a mounted Secret file, without the trailing newline editors and `echo` add.
fn read_secret(index: usize, path: &Path) -> Result<String, IceServerError> {
    let read = |detail: String| IceServerError::Read {
        index,
        path: path.to_owned(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| read(e.to_string()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(read("the file is empty".into()));
    }
    Ok(text.to_owned())
}

impl IceServers {
    /// Checks the entries and reads their secret files.
    pub fn load(servers: &[IceServerConfig]) -> Result<Self, IceServerError> {
        validate(servers)?;
        let mut resolved = Vec::with_capacity(servers.len());
        for (index, s) in servers.iter().enumerate() {
            let secret = match (&s.auth_secret, &s.auth_secret_file) {
                (Some(text), _) => Some(text.clone()),
                (None, Some(path)) => Some(read_secret(index, path)?),
                (None, None) => None,
            };
            let credential = match (&s.credential, &s.credential_file) {
                (Some(text), _) => Some(text.clone()),
                (None, Some(path)) => Some(read_secret(index, path)?),
                (None, None) => None,
            };
            let credentials = match (secret, credential) {
                (Some(secret), _) => Credentials::TimeLimited {
                    secret,
                    name: s.username.clone().unwrap_or_else(|| DEFAULT_REST_NAME.to_owned()),
                    ttl: s
                        .credential_ttl_secs
                        .map_or(DEFAULT_CREDENTIAL_TTL, Duration::from_secs),
                },
                (None, Some(credential)) => Credentials::Fixed {
                    // Checked: a fixed credential comes with its username.
                    username: s.username.clone().unwrap_or_default(),
                    credential,
                },
                (None, None) => Credentials::None,
            };
            resolved.push(IceServer {
                urls: s.urls.clone(),
                credentials,
            });
        }
        Ok(Self(resolved))
    }

    /// Whether no server is configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether some entry carries credentials (and is withheld from callers without the token).
    pub fn has_credentials(&self) -> bool {
        self.0.iter().any(|s| !matches!(s.credentials, Credentials::None))
    }

    /// The `RTCIceServer` list for a page, time-limited credentials valid from `now`. Without
    /// `with_credentials` (a caller that did not show the offer token) entries that carry
    /// credentials are left out: they would let anyone relay traffic through the TURN server.
    pub fn for_page(&self, now: SystemTime, with_credentials: bool) -> Vec<Value> {
        let unix = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        self.0
            .iter()
            .filter_map(|s| match &s.credentials {
                Credentials::None => Some(json!({"urls": s.urls})),
                _ if !with_credentials => None,
                Credentials::Fixed { username, credential } => {
                    Some(json!({"urls": s.urls, "username": username, "credential": credential}))
                }
                Credentials::TimeLimited { secret, name, ttl } => {
                    let (username, credential) = rest_credentials(secret, name, (unix + *ttl).as_secs());
                    Some(json!({"urls": s.urls, "username": username, "credential": credential}))
                }
            })
            .collect()
    }
}

/// TURN REST API credentials (coturn `use-auth-secret`): username `<expiry unix time>:<name>`,
/// password base64(HMAC-SHA1(secret, username)). The TURN server recomputes the password from
/// the username and refuses it after the expiry.
pub fn rest_credentials(secret: &str, name: &str, expires_unix: u64) -> (String, String) {
    let username = format!("{expires_unix}:{name}");
    (
        username.clone(),
        hmac_sha1_base64(secret.as_bytes(), username.as_bytes()),
    )
}

fn hmac_sha1_base64(key: &[u8], message: &[u8]) -> String {
    // HMAC takes keys of any length (longer ones are hashed first).
    let mut mac = Hmac::<Sha1>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(urls: &[&str]) -> IceServerConfig {
        IceServerConfig {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            ..IceServerConfig::default()
        }
    }

    #[test]
    fn hmac_sha1_matches_rfc_2202_test_case_2() {
        // key "Jefe", data "what do ya want for nothing?" -> effcdf6ae5eb2fa2d27416d5f184df9c259a7c79
        assert_eq!(
            hmac_sha1_base64(b"Jefe", b"what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
    }

    #[test]
    fn rest_credentials_are_the_expiry_and_name_and_their_hmac() {
        // python3: base64.b64encode(hmac.new(b"north", b"1700003600:livefilter", hashlib.sha1).digest())
        assert_eq!(
            rest_credentials("north", "livefilter", 1_700_003_600),
            (
                "1700003600:livefilter".to_owned(),
                "0//FLvKjGQ0VFB3vwJGB7rlw4Eo=".to_owned()
            )
        );
    }

    #[test]
    fn the_page_gets_fresh_time_limited_credentials_expiring_after_the_ttl() {
        let servers = IceServers::load(&[IceServerConfig {
            auth_secret: Some("north".into()),
            credential_ttl_secs: Some(3600),
            ..turn(&["turn:127.0.0.1:3478?transport=udp"])
        }])
        .unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);

        let page = servers.for_page(now, true);

        assert_eq!(
            page,
            vec![json!({
                "urls": ["turn:127.0.0.1:3478?transport=udp"],
                "username": "1700003600:livefilter",
                "credential": "0//FLvKjGQ0VFB3vwJGB7rlw4Eo=",
            })]
        );
    }

    #[test]
    fn without_the_token_only_entries_without_credentials_are_given() {
        let servers = IceServers::load(&[
            turn(&["stun:stun.example:3478"]),
            IceServerConfig {
                username: Some("alice".into()),
                credential: Some("pw".into()),
                ..turn(&["turn:turn.example:3478"])
            },
            IceServerConfig {
                auth_secret: Some("s".into()),
                ..turn(&["turns:turn.example:5349?transport=tcp"])
            },
        ])
        .unwrap();

        let anonymous = servers.for_page(SystemTime::now(), false);
        let trusted = servers.for_page(SystemTime::now(), true);

        assert_eq!(anonymous, vec![json!({"urls": ["stun:stun.example:3478"]})]);
        assert_eq!(trusted.len(), 3);
        assert_eq!(trusted[1]["username"], "alice");
        assert_eq!(trusted[1]["credential"], "pw");
        assert!(servers.has_credentials());
    }

    #[test]
    fn secret_files_are_read_trimmed_and_an_empty_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("lf-ice-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "north\n").unwrap();
        let entry = IceServerConfig {
            auth_secret_file: Some(path.clone()),
            ..turn(&["turn:t:3478"])
        };

        let page = IceServers::load(std::slice::from_ref(&entry))
            .unwrap()
            .for_page(UNIX_EPOCH, true);
        std::fs::write(&path, "\n").unwrap();
        let empty = IceServers::load(&[entry]).unwrap_err();

        let expected = rest_credentials("north", "livefilter", DEFAULT_CREDENTIAL_TTL.as_secs()).1;
        assert_eq!(page[0]["credential"], expected);
        assert_eq!(
            empty.to_string(),
            format!("ice.servers[0]: cannot read {}: the file is empty", path.display())
        );
    }

    #[test]
    fn unusable_entries_are_named() {
        let cases = [
            (
                turn(&[]),
                "ice.servers[0]: needs at least one stun:, turn: or turns: URL",
            ),
            (
                turn(&["http://turn.example"]),
                "ice.servers[0]: \"http://turn.example\" is not a stun:, stuns:, turn: or turns: URL",
            ),
            (
                turn(&["turn:t:3478"]),
                "ice.servers[0]: turn: URLs need credentials (username with credential, or auth_secret)",
            ),
            (
                IceServerConfig {
                    credential: Some("pw".into()),
                    ..turn(&["turn:t:3478"])
                },
                "ice.servers[0]: a fixed credential needs its username",
            ),
            (
                IceServerConfig {
                    username: Some("a".into()),
                    credential: Some("pw".into()),
                    auth_secret: Some("s".into()),
                    ..turn(&["turn:t:3478"])
                },
                "ice.servers[0]: a fixed credential and an auth secret exclude each other",
            ),
            (
                IceServerConfig {
                    auth_secret: Some("s".into()),
                    credential_ttl_secs: Some(10),
                    ..turn(&["turn:t:3478"])
                },
                "ice.servers[0]: credential_ttl_secs = 10 is out of range (60..=604800)",
            ),
        ];
        for (entry, message) in cases {
            assert_eq!(validate(&[entry]).unwrap_err().to_string(), message);
        }
        assert!(validate(&[turn(&["stun:s:3478"])]).is_ok());
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let servers = IceServers::load(&[IceServerConfig {
            auth_secret: Some("north-secret".into()),
            ..turn(&["turn:t:3478"])
        }])
        .unwrap();

        assert_eq!(format!("{servers:?}"), r#"[["turn:t:3478"]]"#);
    }
}
