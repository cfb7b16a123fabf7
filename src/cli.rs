//! The `mlstack` command tree (`mlstack <component> <verb>`). Later components add
//! their subcommands here; only subcommands that work exist.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

/// mlstack: a miniature end-to-end ML systems stack (storage, consensus,
/// streaming ingest, training, inference), one chapter per crate.
#[derive(Debug, Parser)]
#[command(name = "mlstack", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr: `text` or `json`. The level comes from RUST_LOG.
    #[arg(
        long,
        global = true,
        env = "MLSTACK_LOG_FORMAT",
        default_value = "text",
        value_parser = parse_log_format
    )]
    pub log_format: observe::LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

fn parse_log_format(s: &str) -> Result<observe::LogFormat, String> {
    s.parse().map_err(|e: observe::Error| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the end-to-end demo on embedded defaults: starts what exists of the
    /// stack in-process on ephemeral ports, drives it, and prints what it measured.
    Demo(DemoArgs),
    /// Diagnostics: a gRPC ping that relays through servers and shows the trace.
    #[command(subcommand)]
    Diag(DiagCommand),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Print the demo's findings as JSON instead of text.
    #[arg(long, env = "MLSTACK_JSON")]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DiagCommand {
    /// Serve `mlstack.diag.v1.Diag` with gRPC health and reflection, plus
    /// /metrics, /healthz and /readyz, until SIGINT or SIGTERM.
    Serve(DiagServeArgs),
    /// Ping a server, optionally relayed through more servers; prints every hop
    /// with the trace id it handled the request in.
    Ping(DiagPingArgs),
}

#[derive(Debug, Args)]
pub struct DiagServeArgs {
    /// gRPC listen address.
    #[arg(long, env = "MLSTACK_LISTEN", default_value = "127.0.0.1:7090")]
    pub listen: SocketAddr,
    /// Metrics (/metrics, /healthz, /readyz) listen address.
    #[arg(long, env = "MLSTACK_METRICS_LISTEN", default_value = "127.0.0.1:9190")]
    pub metrics_listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct DiagPingArgs {
    /// The server to ping (`host:port` or `http://host:port`).
    #[arg(long, env = "MLSTACK_ENDPOINT", default_value = "127.0.0.1:7090")]
    pub endpoint: String,
    /// Servers the first one relays the ping through, in order (repeat or
    /// comma-separate).
    #[arg(long, env = "MLSTACK_VIA", value_delimiter = ',')]
    pub via: Vec<String>,
    /// Payload echoed back by the last hop.
    #[arg(long, env = "MLSTACK_PAYLOAD", default_value = "ping")]
    pub payload: String,
    /// Seconds to wait for the answer.
    #[arg(long, env = "MLSTACK_TIMEOUT", default_value_t = 5.0)]
    pub timeout: f64,
    /// Print the reply as JSON.
    #[arg(long, env = "MLSTACK_JSON")]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn via_accepts_commas_and_repeats() {
        let cli = Cli::try_parse_from([
            "mlstack", "diag", "ping", "--via", "a:1,b:2", "--via", "c:3",
        ])
        .expect("parses");
        match cli.command {
            Command::Diag(DiagCommand::Ping(p)) => assert_eq!(p.via, ["a:1", "b:2", "c:3"]),
            other => panic!("wrong command {other:?}"),
        }
    }

    #[test]
    fn bad_log_format_is_rejected_with_the_value() {
        let err = Cli::try_parse_from(["mlstack", "--log-format", "yaml", "demo"])
            .expect_err("yaml is not a log format");
        assert!(err.to_string().contains("yaml"), "{err}");
    }
}
