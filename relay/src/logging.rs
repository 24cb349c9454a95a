//! What the relay prints for a person: which logs are on, and an error told once.
//!
//! `LIVEFILTER_LOG` is the relay's own level (`debug` turns on the relay's debug lines, not the
//! WebRTC stack's thousands); `LIVEFILTER_STACK_LOG` is the stack's (webrtc-rs, its ICE, DTLS,
//! SRTP and SCTP crates). A full directive list (`warn,livefilter_relay=debug,rtc_ice=trace`) in
//! `LIVEFILTER_LOG` is taken as written.

#![forbid(unsafe_code)]

/// The crates of the WebRTC stack, whose warnings fire on every normal session ("no candidate
/// pairs yet", "empty server_config", ...).
const STACK_CRATES: [&str; 7] = [
    "webrtc",
    "rtc",
    "rtc_ice",
    "rtc_dtls",
    "rtc_sctp",
    "rtc_srtp",
    "interceptor",
];

/// Our crates.
const OWN_CRATES: [&str; 2] = ["livefilter_relay", "livefilter_contract"];

/// The filter directives for `relay` (`LIVEFILTER_LOG`) and `stack` (`LIVEFILTER_STACK_LOG`):
/// a bare level applies to our crates (default `info`), the stack gets its own (default
/// `error`), everything else `warn`. A value with `=` or `,` is a directive list, used as is.
pub fn directives(relay: Option<&str>, stack: Option<&str>) -> String {
    let relay = relay.map(str::trim).filter(|s| !s.is_empty());
    if let Some(list) = relay.filter(|r| r.contains('=') || r.contains(',')) {
        return list.to_owned();
    }
    let own = relay.unwrap_or("info");
    let stack = stack.map(str::trim).filter(|s| !s.is_empty()).unwrap_or("error");
    let mut parts = vec!["warn".to_owned()];
    parts.extend(OWN_CRATES.iter().map(|c| format!("{c}={own}")));
    parts.extend(STACK_CRATES.iter().map(|c| format!("{c}={stack}")));
    parts.join(",")
}

/// Colours only for a person at a terminal who has not asked for none (`NO_COLOR`).
pub fn use_ansi(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// An error and its causes in one line, each cause once: a cause whose text its parent already
/// includes (our errors name their source in their message) is not repeated.
pub fn error_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut shown = line.clone();
    let mut cause = err.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !shown.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        shown = text;
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot listen on 127.0.0.1:8080: {0}")]
    struct Listen(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("serve failed")]
    struct Serve(#[source] Listen);

    #[test]
    fn a_bare_level_is_the_relays_own_and_leaves_the_stack_at_errors() {
        let d = directives(Some("debug"), None);

        assert!(d.starts_with("warn,livefilter_relay=debug,"), "{d}");
        assert!(d.contains("webrtc=error") && d.contains("rtc_ice=error"), "{d}");
    }

    #[test]
    fn the_stack_has_its_own_setting_and_a_directive_list_is_taken_as_written() {
        assert!(directives(None, Some("debug")).contains("rtc_dtls=debug"));
        assert!(directives(None, None).contains("livefilter_relay=info"));
        assert_eq!(
            directives(Some("info,rtc_ice=trace"), Some("debug")),
            "info,rtc_ice=trace"
        );
    }

    #[test]
    fn colours_need_a_terminal_and_no_no_color() {
        assert!(use_ansi(true, None));
        assert!(!use_ansi(false, None));
        assert!(!use_ansi(true, Some("1")));
        assert!(use_ansi(true, Some("")));
    }

    #[test]
    fn a_cause_already_in_its_parents_message_is_told_once() {
        let io = std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use");
        let err = Serve(Listen(io));

        assert_eq!(
            error_line(&err),
            "serve failed: cannot listen on 127.0.0.1:8080: Address already in use"
        );
    }
}
