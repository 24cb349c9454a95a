//! livefilter relay: the data plane. Test pattern and (later) browser ingest, codecs, filters,
//! and the publishers that push the result into Sora, WHIP or a local preview.
#![deny(unsafe_code)]

pub mod bench;
pub mod codec;
pub mod config;
pub mod frame;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod pipeline;
pub mod publish;
pub mod testpattern;
