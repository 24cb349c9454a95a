//! livefilter operator: turns `LiveFilterSession` objects into ImageFlux channels, relay Pods,
//! Services and Ingresses, and writes back where to send, where to watch and how fast it goes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apidouble;
pub mod controller;
pub mod crd;
pub mod http;
pub mod imageflux;
pub mod leader;
pub mod metrics;
pub mod objects;
pub mod observer;
pub mod ports;
pub mod relay_config;
pub mod runner;
pub mod status;
pub mod sweep;
pub mod triggers;
