//! livefilter relay: the data plane. Test pattern and (later) browser ingest, codecs, filters,
//! and the publishers that push the result into Sora, WHIP or a local preview.
#![deny(unsafe_code)]

pub mod abs_capture;
pub mod answer;
pub mod bench;
pub mod codec;
pub mod config;
pub mod feed;
pub mod filter;
pub mod frame;
pub mod health;
pub mod http;
pub mod ice;
pub mod ice_servers;
pub mod infer;
pub mod ingest;
pub mod install;
pub mod latency;
pub mod layers;
pub mod logging;
pub mod media_clock;
pub mod metrics;
pub mod offer;
pub mod pipeline;
pub mod publish;
pub mod rate;
pub mod run;
pub mod scale;
pub mod session;
pub mod slot;
pub mod stats_line;
pub mod testpattern;
pub mod y4m;
