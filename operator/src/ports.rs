//! Host ports for relay Pods, handed out the way Agones does it: each session gets an HTTP and a
//! UDP port from configured ranges, the Pod declares them as container ports (with
//! `hostNetwork` they are host ports, so the scheduler never puts two clashing relays on one
//! node), and the allocation lives in each session's `status.ports`, from which it is rebuilt at
//! startup before any new port is handed out. A port is held by at most one session at a time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use crate::crd::PortsStatus;

/// An inclusive port range, written `40000-40999`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// The first port.
    pub first: u16,
    /// The last port (inclusive).
    pub last: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn len(self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Never true: a parsed range holds at least one port.
    pub fn is_empty(self) -> bool {
        false
    }

    fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    fn overlaps(self, other: PortRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?} is not a port range like 40000-40999"))?;
        let first: u16 = a.trim().parse().map_err(|_| format!("{a:?} is not a port number"))?;
        let last: u16 = b.trim().parse().map_err(|_| format!("{b:?} is not a port number"))?;
        if first < 1024 || last < first {
            return Err(format!("{s:?}: need 1024 <= first <= last"));
        }
        Ok(Self { first, last })
    }
}

/// Why ports could not be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Every port of a range is held.
    #[error("no free {protocol} port left in {range} ({held} sessions hold ports); widen the operator's port range")]
    Exhausted {
        /// `HTTP` or `UDP`.
        protocol: &'static str,
        /// The range.
        range: PortRange,
        /// Sessions holding ports.
        held: usize,
    },
    /// A session's recorded port is held by another session.
    #[error("{protocol} port {port} is already held by {holder}")]
    Conflict {
        /// `HTTP` or `UDP`.
        protocol: &'static str,
        /// The port.
        port: u16,
        /// The session holding it.
        holder: String,
    },
    /// The two ranges overlap, so one port could be handed out twice.
    #[error("the HTTP range {http} and the UDP range {udp} overlap")]
    Overlap {
        /// The HTTP range.
        http: PortRange,
        /// The UDP range.
        udp: PortRange,
    },
}

/// Which session holds which ports. Keys are `namespace/name`.
#[derive(Debug)]
pub struct PortAllocator {
    http_range: PortRange,
    udp_range: PortRange,
    sessions: HashMap<String, PortsStatus>,
    http: BTreeMap<u16, String>,
    udp: BTreeMap<u16, String>,
}

impl PortAllocator {
    /// An empty allocator over two disjoint ranges.
    pub fn new(http_range: PortRange, udp_range: PortRange) -> Result<Self, PortError> {
        if http_range.overlaps(udp_range) {
            return Err(PortError::Overlap {
                http: http_range,
                udp: udp_range,
            });
        }
        Ok(Self {
            http_range,
            udp_range,
            sessions: HashMap::new(),
            http: BTreeMap::new(),
            udp: BTreeMap::new(),
        })
    }

    /// The ports a session holds.
    pub fn held(&self, session: &str) -> Option<PortsStatus> {
        self.sessions.get(session).copied()
    }

    /// Records ports a session already uses (from its status, or static ports from its spec).
    /// Ports outside today's ranges are recorded too: they are in use whatever the flags say.
    pub fn claim(&mut self, session: &str, ports: PortsStatus) -> Result<(), PortError> {
        if self.sessions.get(session) == Some(&ports) {
            return Ok(());
        }
        if let Some(holder) = self.http.get(&ports.http).filter(|h| *h != session) {
            return Err(PortError::Conflict {
                protocol: "HTTP",
                port: ports.http,
                holder: holder.clone(),
            });
        }
        if let Some(holder) = self.udp.get(&ports.udp).filter(|h| *h != session) {
            return Err(PortError::Conflict {
                protocol: "UDP",
                port: ports.udp,
                holder: holder.clone(),
            });
        }
        self.release(session);
        self.insert(session, ports);
        Ok(())
    }

    /// The session's ports: the ones it holds, or the lowest free pair.
    pub fn allocate(&mut self, session: &str) -> Result<PortsStatus, PortError> {
        if let Some(p) = self.held(session) {
            return Ok(p);
        }
        let http = lowest_free(self.http_range, &self.http).ok_or(PortError::Exhausted {
            protocol: "HTTP",
            range: self.http_range,
            held: self.sessions.len(),
        })?;
        let udp = lowest_free(self.udp_range, &self.udp).ok_or(PortError::Exhausted {
            protocol: "UDP",
            range: self.udp_range,
            held: self.sessions.len(),
        })?;
        let ports = PortsStatus { http, udp };
        self.insert(session, ports);
        Ok(ports)
    }

    /// Frees a deleted session's ports.
    pub fn release(&mut self, session: &str) {
        if let Some(p) = self.sessions.remove(session) {
            self.http.remove(&p.http);
            self.udp.remove(&p.udp);
        }
    }

    /// Whether `ports` lie inside today's ranges.
    pub fn in_range(&self, ports: PortsStatus) -> bool {
        self.http_range.contains(ports.http) && self.udp_range.contains(ports.udp)
    }

    fn insert(&mut self, session: &str, ports: PortsStatus) {
        self.sessions.insert(session.to_owned(), ports);
        self.http.insert(ports.http, session.to_owned());
        self.udp.insert(ports.udp, session.to_owned());
    }
}

fn lowest_free(range: PortRange, used: &BTreeMap<u16, String>) -> Option<u16> {
    (range.first..=range.last).find(|p| !used.contains_key(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocator(http: &str, udp: &str) -> PortAllocator {
        PortAllocator::new(http.parse().unwrap(), udp.parse().unwrap()).unwrap()
    }

    #[test]
    fn sessions_get_the_lowest_free_pair_and_keep_it() {
        let mut a = allocator("38000-38009", "40000-40009");

        let first = a.allocate("ns/a").unwrap();
        let second = a.allocate("ns/b").unwrap();
        let again = a.allocate("ns/a").unwrap();

        assert_eq!(
            first,
            PortsStatus {
                http: 38000,
                udp: 40000
            }
        );
        assert_eq!(
            second,
            PortsStatus {
                http: 38001,
                udp: 40001
            }
        );
        assert_eq!(again, first);
    }

    #[test]
    fn ports_rebuilt_from_statuses_are_never_handed_out_again() {
        let mut a = allocator("38000-38002", "40000-40002");
        a.claim(
            "ns/old",
            PortsStatus {
                http: 38000,
                udp: 40001,
            },
        )
        .unwrap();

        let new = a.allocate("ns/new").unwrap();

        assert_eq!(
            new,
            PortsStatus {
                http: 38001,
                udp: 40000
            }
        );
    }

    #[test]
    fn a_claim_on_a_port_held_by_another_session_is_a_conflict() {
        let mut a = allocator("38000-38002", "40000-40002");
        a.claim(
            "ns/a",
            PortsStatus {
                http: 38000,
                udp: 40000,
            },
        )
        .unwrap();

        let err = a
            .claim(
                "ns/b",
                PortsStatus {
                    http: 38001,
                    udp: 40000,
                },
            )
            .unwrap_err();

        assert_eq!(
            err,
            PortError::Conflict {
                protocol: "UDP",
                port: 40000,
                holder: "ns/a".into()
            }
        );
        assert_eq!(a.held("ns/b"), None);
    }

    #[test]
    fn released_ports_are_reused() {
        let mut a = allocator("38000-38000", "40000-40000");
        a.allocate("ns/a").unwrap();
        assert!(matches!(
            a.allocate("ns/b"),
            Err(PortError::Exhausted { protocol: "HTTP", .. })
        ));

        a.release("ns/a");

        assert_eq!(
            a.allocate("ns/b").unwrap(),
            PortsStatus {
                http: 38000,
                udp: 40000
            }
        );
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let err = PortAllocator::new("40000-40100".parse().unwrap(), "40100-40200".parse().unwrap()).unwrap_err();

        assert!(matches!(err, PortError::Overlap { .. }));
    }

    #[test]
    fn ranges_parse_and_reject_privileged_or_reversed_ports() {
        assert_eq!("40000-40999".parse::<PortRange>().unwrap().len(), 1000);
        assert!("80-90".parse::<PortRange>().is_err());
        assert!("5000-4000".parse::<PortRange>().is_err());
        assert!("5000".parse::<PortRange>().is_err());
    }
}
