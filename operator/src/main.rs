//! `livefilter-operator`: turns LiveFilterSession objects into ImageFlux channels, relay pods and
//! Services. The reconcile loop arrives with the operator issue; this binary reserves the name.
#![forbid(unsafe_code)]

use clap::Parser;

#[derive(Parser)]
#[command(name = "livefilter-operator", version, about = "livefilter Kubernetes operator (not yet implemented)")]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    tracing::error!("the operator's reconcile loop is not implemented yet (see the operator issue)");
    std::process::exit(2)
}
