//! The contract between the relay and the operator: the relay's YAML configuration (which the
//! operator writes) and its `/status` JSON (which the operator reads), as one set of plain serde
//! types that both crates link. No I/O and no behaviour beyond naming values: the relay keeps
//! validation and construction, the operator keeps its decisions. The one exception is
//! [`cpu`], the start-up check both binaries make of the CPU their build needs.

#![forbid(unsafe_code)]

pub mod config;
pub mod cpu;
pub mod status;
