//! `mock-upstream`: serves the mock Anthropic/OpenAI API until interrupted.

use std::time::Duration;

use clap::Parser;
use mock_upstream::{MockOptions, MockUpstream};

#[derive(Parser)]
#[command(
    name = "mock-upstream",
    about = "A local stand-in for the Anthropic and OpenAI APIs"
)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Size of each answer's text in bytes.
    #[arg(long, default_value_t = 5000)]
    answer_bytes: usize,
    /// Pause between stream events, in milliseconds.
    #[arg(long, default_value_t = 0)]
    event_delay_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let options = MockOptions {
        answer_bytes: cli.answer_bytes,
        event_delay: Duration::from_millis(cli.event_delay_ms),
    };
    let mock = MockUpstream::start(&cli.listen, options).await?;
    println!("mock-upstream listening on {}", mock.url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
