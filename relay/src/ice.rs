//! Advertised addresses: behind a 1:1 NAT (a cloud VM, a Kubernetes node's ExternalIP) the
//! relay's sockets have private addresses, so its host candidates are rewritten to carry the
//! public one instead. (webrtc-rs 0.21 stores its own NAT 1:1 setting but never applies it.)

use std::net::IpAddr;

/// Rewrites one candidate attribute (`candidate:...`, with or without `a=`): a host
/// candidate's address becomes the first public address of the same family.
pub fn rewrite_candidate(candidate: &str, public_ips: &[IpAddr]) -> String {
    let mut fields: Vec<&str> = candidate.split(' ').collect();
    // foundation component transport priority address port "typ" type ...
    if fields.len() < 8 || fields[6] != "typ" || fields[7] != "host" {
        return candidate.to_owned();
    }
    let Ok(local) = fields[4].parse::<IpAddr>() else {
        return candidate.to_owned();
    };
    let Some(public) = public_ips.iter().find(|p| p.is_ipv4() == local.is_ipv4()) else {
        return candidate.to_owned();
    };
    let public = public.to_string();
    fields[4] = &public;
    fields.join(" ")
}

/// Rewrites every host candidate in an SDP, and the connection lines that name an address.
pub fn rewrite_sdp(sdp: &str, public_ips: &[IpAddr]) -> String {
    if public_ips.is_empty() {
        return sdp.to_owned();
    }
    let ending = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out: Vec<String> = Vec::new();
    for line in sdp.split(ending) {
        if line.starts_with("a=candidate:") {
            out.push(rewrite_candidate(line, public_ips));
        } else if let Some(rest) = line.strip_prefix("c=IN ") {
            let (family, addr) = rest.split_once(' ').unwrap_or((rest, ""));
            let replacement = public_ips.iter().find(|p| (family == "IP4") == p.is_ipv4());
            match (addr.parse::<IpAddr>(), replacement) {
                (Ok(a), Some(p)) if !a.is_unspecified() => out.push(format!("c=IN {family} {p}")),
                _ => out.push(line.to_owned()),
            }
        } else {
            out.push(line.to_owned());
        }
    }
    out.join(ending)
}

/// Parses the configured public addresses, skipping empty entries (an unset environment
/// variable); a bad one is named.
pub fn parse_public_ips(ips: &[String]) -> Result<Vec<IpAddr>, String> {
    ips.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<IpAddr>().map_err(|e| format!("public IP {s:?}: {e}")))
        .collect()
}

/// The addresses in a file the platform fills in (e.g. Kubernetes' downward API), one or more
/// separated by whitespace; empty until it is filled.
pub fn read_public_ips_file(path: &std::path::Path) -> Result<Vec<IpAddr>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let entries: Vec<String> = text.split_whitespace().map(str::to_owned).collect();
    parse_public_ips(&entries).map_err(|e| format!("{}: {e}", path.display()))
}

/// An inclusive UDP port range, e.g. `40000-40100`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

impl std::str::FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("port range {s:?} must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

/// The browser ingest's bind addresses for this session: `udp_addrs` with their port replaced by
/// the first port of `range` that is free on every one of their IPs (probed by binding it).
pub fn pick_udp_port(udp_addrs: &[String], range: PortRange) -> Result<Vec<String>, String> {
    let ips: Vec<&str> = udp_addrs
        .iter()
        .map(|a| a.rsplit_once(':').map_or(a.as_str(), |(ip, _)| ip))
        .collect();
    for port in range.first..=range.last {
        let free = ips.iter().all(|ip| {
            let host = ip.trim_matches(['[', ']']);
            std::net::UdpSocket::bind((host, port)).is_ok()
        });
        if free {
            return Ok(ips.iter().map(|ip| format!("{ip}:{port}")).collect());
        }
    }
    Err(format!("no free UDP port in {}-{}", range.first, range.last))
}

/// Whether any of the UDP bind addresses is a loopback one (webrtc-rs then has to be told to
/// offer loopback candidates: tests and single-machine setups).
pub fn binds_loopback(udp_addrs: &[String]) -> bool {
    udp_addrs
        .iter()
        .filter_map(|a| a.rsplit_once(':').map(|(ip, _)| ip.trim_matches(['[', ']'])))
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .any(|ip| ip.is_loopback())
}

/// The same local addresses with port 0: connections that dial out (to an SFU) or serve the
/// preview take ephemeral ports, leaving the fixed port to the browser's ingest.
pub fn ephemeral(udp_addrs: &[String]) -> Vec<String> {
    udp_addrs
        .iter()
        .map(|a| match a.rsplit_once(':') {
            Some((ip, _port)) => format!("{ip}:0"),
            None => a.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn host_candidates_carry_the_public_address_of_their_family() {
        let public = ips(&["203.0.113.7", "2001:db8::7"]);
        assert_eq!(
            rewrite_candidate("candidate:1 1 udp 2130706431 10.0.0.5 40000 typ host", &public),
            "candidate:1 1 udp 2130706431 203.0.113.7 40000 typ host"
        );
        assert_eq!(
            rewrite_candidate(
                "a=candidate:2 1 udp 2130706431 fd00::5 40000 typ host generation 0",
                &public
            ),
            "a=candidate:2 1 udp 2130706431 2001:db8::7 40000 typ host generation 0"
        );
    }

    #[test]
    fn relay_and_srflx_candidates_and_missing_families_are_left_alone() {
        let public = ips(&["203.0.113.7"]);
        let relay = "candidate:3 1 udp 1 198.51.100.1 3478 typ relay raddr 0.0.0.0 rport 0";
        assert_eq!(rewrite_candidate(relay, &public), relay);
        let v6 = "candidate:4 1 udp 1 fd00::5 40000 typ host";
        assert_eq!(rewrite_candidate(v6, &public), v6);
        assert_eq!(rewrite_candidate("garbage", &public), "garbage");
    }

    #[test]
    fn an_sdp_is_rewritten_line_by_line_keeping_crlf() {
        let sdp = "v=0\r\nc=IN IP4 10.0.0.5\r\na=candidate:1 1 udp 1 10.0.0.5 40000 typ host\r\nc=IN IP4 0.0.0.0\r\n";
        assert_eq!(
            rewrite_sdp(sdp, &ips(&["203.0.113.7"])),
            "v=0\r\nc=IN IP4 203.0.113.7\r\na=candidate:1 1 udp 1 203.0.113.7 40000 typ host\r\nc=IN IP4 0.0.0.0\r\n"
        );
        assert_eq!(rewrite_sdp(sdp, &[]), sdp);
    }

    #[test]
    fn port_ranges_parse_and_bad_ones_are_named() {
        assert_eq!(
            "40000-40100".parse(),
            Ok(PortRange {
                first: 40000,
                last: 40100
            })
        );
        assert!(
            "40100-40000"
                .parse::<PortRange>()
                .unwrap_err()
                .contains("\"40100-40000\"")
        );
        assert!("0-5".parse::<PortRange>().is_err());
        assert!("40000".parse::<PortRange>().is_err());
    }

    #[test]
    fn the_first_free_port_of_the_range_is_picked() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let range = PortRange {
            first: port,
            last: port.saturating_add(50),
        };

        let picked = pick_udp_port(&["127.0.0.1:0".into()], range).unwrap();

        let picked_port: u16 = picked[0].rsplit_once(':').unwrap().1.parse().unwrap();
        assert!(picked_port > port && picked_port <= range.last, "{picked:?}");
        let only_taken = PortRange {
            first: port,
            last: port,
        };
        assert_eq!(
            pick_udp_port(&["127.0.0.1:0".into()], only_taken).unwrap_err(),
            format!("no free UDP port in {port}-{port}")
        );
    }

    #[test]
    fn loopback_binds_are_recognised_in_both_families() {
        assert!(binds_loopback(&["127.0.0.1:0".into()]));
        assert!(binds_loopback(&["[::1]:40000".into()]));
        assert!(!binds_loopback(&["0.0.0.0:0".into(), "10.0.0.5:1".into()]));
    }

    #[test]
    fn fixed_ports_become_ephemeral_for_outgoing_connections() {
        assert_eq!(
            ephemeral(&["0.0.0.0:40000".into(), "[::]:40000".into()]),
            ["0.0.0.0:0", "[::]:0"]
        );
    }

    #[test]
    fn empty_entries_are_skipped_and_files_are_read() {
        assert_eq!(
            parse_public_ips(&["".into(), " 203.0.113.7 ".into()]).unwrap(),
            ips(&["203.0.113.7"])
        );
        let path = std::env::temp_dir().join(format!("lf-ip-{}", std::process::id()));
        std::fs::write(&path, "198.51.100.9\n").unwrap();
        assert_eq!(read_public_ips_file(&path).unwrap(), ips(&["198.51.100.9"]));
        std::fs::write(&path, "").unwrap();
        assert!(read_public_ips_file(&path).unwrap().is_empty());
    }

    #[test]
    fn bad_public_ips_are_named() {
        assert_eq!(
            parse_public_ips(&["node-ip".into()]).unwrap_err(),
            "public IP \"node-ip\": invalid IP address syntax"
        );
    }
}
