//! `bullpen`: the command-line tool.
//!
//! Today it has `doctor`, which checks a Redis server as a production guide would. The job
//! commands (`add`, `work`, `events`, `stats`, ...) arrive with the producer, worker and
//! events crates.

mod doctor;

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Instant;

use bullpen_conn::{redis, Connection, EvictionCheck, RedisOptions};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "bullpen",
    version,
    about = "BullMQ-compatible job queues on Redis, from Rust"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a Redis server for production use: version, eviction policy, role,
    /// persistence, maxclients and latency. Exits non-zero if any check fails.
    Doctor {
        /// Server URL (redis://, rediss://, redis+unix://).
        #[arg(long, env = "BULLPEN_URL", default_value = "redis://127.0.0.1:6379")]
        url: String,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BULLPEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Doctor { url } => match run_doctor(&url).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("bullpen doctor: {e}");
                ExitCode::from(2)
            }
        },
    }
}

async fn run_doctor(url: &str) -> Result<ExitCode, bullpen_conn::Error> {
    let mut opts = RedisOptions::from_url(url)?.producer();
    // The doctor reports problems instead of refusing the server.
    opts.eviction_check = EvictionCheck::Skip;
    opts.skip_version_check = true;
    let conn = Connection::connect(opts).await?;
    let mut pings = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        conn.ping().await?;
        pings.push(t.elapsed());
    }
    let text: String = conn.query(&redis::cmd("INFO")).await?;
    let mut config = HashMap::new();
    for key in ["appendfsync", "maxclients"] {
        // CONFIG is often disabled on managed services; the checks then warn.
        if let Ok(pair) = conn
            .query::<Vec<String>>(redis::cmd("CONFIG").arg("GET").arg(key))
            .await
        {
            if let [k, v] = pair.as_slice() {
                config.insert(k.clone(), v.clone());
            }
        }
    }
    let checks = doctor::evaluate(&doctor::Facts {
        info: bullpen_conn::ServerInfo::parse(&text),
        config,
        pings,
    });
    print!("{}", doctor::render(&checks));
    let worst = checks.iter().map(|c| c.status).max();
    conn.close();
    Ok(if worst == Some(doctor::Status::Fail) {
        println!("result: fail");
        ExitCode::FAILURE
    } else {
        println!("result: ok");
        ExitCode::SUCCESS
    })
}
