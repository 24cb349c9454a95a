//! The DTLS role a client's SDP asks for (`a=setup:`), checked against Sora's: the server is
//! always the DTLS server, so a client must be the DTLS client (`a=setup:active` in an answer;
//! `actpass` or `active` in a WHIP offer). Pure: SDP text in, verdict out.

use std::fmt;

/// The value of an `a=setup:` line (RFC 4145, RFC 5763).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    /// The sender will be the DTLS client.
    Active,
    /// The sender will be the DTLS server.
    Passive,
    /// Either (offers only).
    Actpass,
    /// No connection wanted.
    Holdconn,
}

impl Setup {
    fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "active" => Some(Setup::Active),
            "passive" => Some(Setup::Passive),
            "actpass" => Some(Setup::Actpass),
            "holdconn" => Some(Setup::Holdconn),
            _ => None,
        }
    }
}

impl fmt::Display for Setup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Setup::Active => "active",
            Setup::Passive => "passive",
            Setup::Actpass => "actpass",
            Setup::Holdconn => "holdconn",
        })
    }
}

/// Why a client's DTLS role was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DtlsRoleRefusal {
    /// The SDP has no `a=setup:` line at all.
    #[error("no a=setup line; this server is the DTLS server (send a=setup:active)")]
    Missing,
    /// An `a=setup:` value that is not a role.
    #[error("a=setup:{0} is not a DTLS role")]
    Unknown(String),
    /// A role that would leave the server anything but the DTLS server.
    #[error("a=setup:{0} refused; this server is the DTLS server (send a=setup:active)")]
    Refused(Setup),
}

/// Every `a=setup:` value in `sdp` (session and media level), in order.
fn setups(sdp: &str) -> Result<Vec<Setup>, DtlsRoleRefusal> {
    sdp.lines()
        .filter_map(|line| line.trim_end_matches('\r').strip_prefix("a=setup:"))
        .map(|value| Setup::parse(value).ok_or_else(|| DtlsRoleRefusal::Unknown(value.trim().to_owned())))
        .collect()
}

fn vet(sdp: &str, allowed: &[Setup]) -> Result<(), DtlsRoleRefusal> {
    let found = setups(sdp)?;
    if found.is_empty() {
        return Err(DtlsRoleRefusal::Missing);
    }
    match found.into_iter().find(|s| !allowed.contains(s)) {
        Some(bad) => Err(DtlsRoleRefusal::Refused(bad)),
        None => Ok(()),
    }
}

/// Checks a client's answer to the endpoint's (`actpass`) offer: only `active` keeps the server
/// the DTLS server.
pub fn vet_answer(sdp: &str) -> Result<(), DtlsRoleRefusal> {
    vet(sdp, &[Setup::Active])
}

/// Checks a WHIP client's offer: `actpass` (the endpoint then answers `passive`) or `active`.
pub fn vet_offer(sdp: &str) -> Result<(), DtlsRoleRefusal> {
    vet(sdp, &[Setup::Actpass, Setup::Active])
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=setup:active\r\na=mid:0\r\n";

    #[test]
    fn an_active_answer_keeps_the_server_the_dtls_server() {
        assert_eq!(vet_answer(ANSWER), Ok(()));
    }

    #[test]
    fn a_passive_answer_is_refused_naming_the_role() {
        let passive = ANSWER.replace("setup:active", "setup:passive");
        let err = vet_answer(&passive).unwrap_err();
        assert_eq!(err, DtlsRoleRefusal::Refused(Setup::Passive));
        assert!(err.to_string().starts_with("a=setup:passive refused"), "{err}");
    }

    #[test]
    fn one_passive_media_section_is_enough_to_refuse() {
        let two = format!("{ANSWER}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=setup:passive\r\n");
        assert_eq!(vet_answer(&two), Err(DtlsRoleRefusal::Refused(Setup::Passive)));
    }

    #[test]
    fn an_answer_without_setup_or_with_actpass_or_garbage_is_refused() {
        assert_eq!(vet_answer("v=0\r\nm=video 9 x 96\r\n"), Err(DtlsRoleRefusal::Missing));
        assert_eq!(
            vet_answer(&ANSWER.replace("active", "actpass")),
            Err(DtlsRoleRefusal::Refused(Setup::Actpass))
        );
        assert_eq!(
            vet_answer(&ANSWER.replace("active", "sideways")),
            Err(DtlsRoleRefusal::Unknown("sideways".into()))
        );
    }

    #[test]
    fn a_whip_offer_may_be_actpass_or_active_but_not_passive() {
        let offer = ANSWER.replace("active", "actpass");
        assert_eq!(vet_offer(&offer), Ok(()));
        assert_eq!(vet_offer(ANSWER), Ok(()));
        assert_eq!(
            vet_offer(&ANSWER.replace("active", "passive")),
            Err(DtlsRoleRefusal::Refused(Setup::Passive))
        );
    }
}
