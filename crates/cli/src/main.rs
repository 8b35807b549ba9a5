//! `bullpen`: the command-line tool.
//!
//! `doctor` checks a Redis server as a production guide would; `add`, `stats`, `job`, `jobs`,
//! `pause`, `resume`, `drain`, `clean`, `obliterate`, `retry`, `promote`, `work` and `events`
//! work on BullMQ queues. Every queue command takes `--url` (or
//! `BULLPEN_URL`) and `--prefix`; every command takes `--tls-ca`, `--tls-cert` and
//! `--tls-key` for `rediss://` URLs.

mod doctor;
mod events_cmd;
mod queue_cmd;
mod work_cmd;

use std::collections::HashMap;
use std::path::PathBuf;
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

#[derive(clap::Args)]
struct QueueArgs {
    /// Server URL: redis://, rediss://, redis+unix:///path, redis+sentinel://h:p,h:p/master
    /// or redis+cluster://h:p,h:p (docs/connections.md).
    #[arg(
        long,
        env = "BULLPEN_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    url: String,
    /// Key prefix of the queues.
    #[arg(long, default_value = "bull", global = true)]
    prefix: String,
    #[command(flatten)]
    tls: TlsArgs,
}

/// TLS files for a `rediss://` URL (the same as its `tls_ca`, `tls_cert` and `tls_key`
/// parameters).
#[derive(clap::Args)]
struct TlsArgs {
    /// CA certificate (PEM) the server's certificate must chain to (rediss:// only).
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers that require mutual TLS (rediss:// only).
    #[arg(long, global = true)]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of the client certificate (rediss:// only).
    #[arg(long, global = true)]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// `url` with the files as query parameters, so that every command reads them through
    /// `RedisOptions::from_url` (which refuses them on anything but `rediss://`).
    fn apply(&self, url: String) -> String {
        let mut url = url;
        for (key, path) in [
            ("tls_ca", &self.tls_ca),
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
        ] {
            if let Some(path) = path {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(key);
                url.push('=');
                url.extend(url::form_urlencoded::byte_serialize(
                    path.to_string_lossy().as_bytes(),
                ));
            }
        }
        url
    }
}

#[derive(Subcommand)]
enum Command {
    /// Add jobs and print their ids, one per line. DATA_JSON `-` reads JSON lines from stdin.
    Add {
        /// Queue name.
        queue: String,
        /// Job name.
        name: String,
        /// Job data as JSON, or `-` for JSON lines on stdin.
        data: String,
        /// Delay in milliseconds.
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Priority, 1 (highest) to 2097151; 0 or absent for none.
        #[arg(long)]
        priority: Option<u32>,
        /// Run this job before the others that wait.
        #[arg(long)]
        lifo: bool,
        /// Attempts before the job fails for good.
        #[arg(long)]
        attempts: Option<u32>,
        /// Backoff between attempts: fixed:MS or exponential:MS.
        #[arg(long)]
        backoff: Option<String>,
        /// Custom job id.
        #[arg(long)]
        job_id: Option<String>,
        /// Deduplication id.
        #[arg(long)]
        dedup_id: Option<String>,
        /// Deduplication window in milliseconds (throttle mode).
        #[arg(long)]
        dedup_ttl_ms: Option<u64>,
        /// Completed jobs to keep: a count, or `all` to remove each at once.
        #[arg(long)]
        remove_on_complete: Option<String>,
        /// Add this many copies.
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Job counts by state: a table, or JSON with --json.
    Stats {
        /// Queue name.
        queue: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// One job, whole, as JSON.
    Job {
        /// Queue name.
        queue: String,
        /// Job id.
        id: String,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Jobs in one state, one JSON object per line (newest first).
    Jobs {
        /// Queue name.
        queue: String,
        /// waiting, active, delayed, prioritized, completed, failed or waiting-children.
        #[arg(long)]
        state: String,
        /// First rank.
        #[arg(long, default_value_t = 0)]
        start: i64,
        /// Last rank (inclusive; -1 = the last).
        #[arg(long, default_value_t = 99)]
        end: i64,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Pause a queue: workers stop taking jobs.
    Pause {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Resume a paused queue.
    Resume {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Process jobs by running CMD once per job: the job as JSON on its stdin, its stdout
    /// (JSON, or text stored as a JSON string) as the return value, a non-zero exit as a
    /// failure whose reason is the last line of stderr. Stops gracefully on SIGINT/SIGTERM.
    Work {
        /// Queue name.
        queue: String,
        /// Shell command run per job.
        #[arg(long)]
        exec: String,
        /// Jobs at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Kill a job's command after this many milliseconds (the job fails).
        #[arg(long)]
        timeout_ms: Option<u64>,
        /// Stop after this many jobs finished.
        #[arg(long)]
        max_jobs: Option<u64>,
        /// Stop once nothing is left to do.
        #[arg(long)]
        exit_when_drained: bool,
        /// Grace period for running jobs at shutdown, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        grace_ms: u64,
        /// Lock duration in milliseconds (BullMQ's default: 30000).
        #[arg(long, default_value_t = 30_000)]
        lock_duration_ms: u64,
        /// Stalled-check interval in milliseconds (BullMQ's default: 30000).
        #[arg(long, default_value_t = 30_000)]
        stalled_interval_ms: u64,
        /// Stalls tolerated before a job is failed (BullMQ's default: 1).
        #[arg(long, default_value_t = 1)]
        max_stalled_count: u32,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Tail a queue's events live, one line per event (JSON lines with --json). Exits
    /// cleanly on SIGINT.
    Events {
        /// Queue name.
        queue: String,
        /// Start after this stream id (`0` for the beginning; the default is now).
        #[arg(long)]
        from: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Delete every waiting job (and delayed ones with --delayed).
    Drain {
        /// Queue name.
        queue: String,
        /// Also delete delayed jobs.
        #[arg(long)]
        delayed: bool,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Delete jobs of one state older than a grace period; prints their ids.
    Clean {
        /// Queue name.
        queue: String,
        /// completed, failed, delayed, prioritized, waiting or active.
        #[arg(long, default_value = "completed")]
        state: String,
        /// Keep jobs younger than this many milliseconds.
        #[arg(long, default_value_t = 0)]
        grace_ms: u64,
        /// Delete at most this many (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: u64,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Delete a queue and all its jobs (refused while jobs are active, unless --force).
    Obliterate {
        /// Queue name.
        queue: String,
        /// Also when jobs are active.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Retry one finished job by id, or every job of --state (failed by default).
    Retry {
        /// Queue name.
        queue: String,
        /// A job id; without it, every job of --state.
        id: Option<String>,
        /// failed or completed.
        #[arg(long, default_value = "failed")]
        state: String,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Run one delayed job now, or every delayed job.
    Promote {
        /// Queue name.
        queue: String,
        /// A job id; without it, every delayed job.
        id: Option<String>,
        #[command(flatten)]
        target: QueueArgs,
    },
    /// Check a Redis server for production use: version, eviction policy, role,
    /// persistence, maxclients and latency. Exits non-zero if any check fails.
    Doctor {
        /// Server URL: redis://, rediss://, redis+unix:///path, redis+sentinel://h:p,h:p/master
        /// or redis+cluster://h:p,h:p (docs/connections.md).
        #[arg(long, env = "BULLPEN_URL", default_value = "redis://127.0.0.1:6379")]
        url: String,
        #[command(flatten)]
        tls: TlsArgs,
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
    let target = |t: QueueArgs| queue_cmd::Target {
        url: t.tls.apply(t.url),
        prefix: t.prefix,
    };
    let result = match cli.command {
        Command::Add {
            queue,
            name,
            data,
            delay_ms,
            priority,
            lifo,
            attempts,
            backoff,
            job_id,
            dedup_id,
            dedup_ttl_ms,
            remove_on_complete,
            count,
            target: t,
        } => {
            let args = queue_cmd::AddArgs {
                delay_ms,
                priority,
                lifo,
                attempts,
                backoff,
                job_id,
                dedup_id,
                dedup_ttl_ms,
                remove_on_complete,
                count,
            };
            queue_cmd::add(&target(t), &queue, &name, &data, &args)
                .await
                .map(|()| true)
        }
        Command::Stats {
            queue,
            json,
            target: t,
        } => queue_cmd::stats(&target(t), &queue, json)
            .await
            .map(|()| true),
        Command::Job {
            queue,
            id,
            target: t,
        } => queue_cmd::job(&target(t), &queue, &id).await,
        Command::Jobs {
            queue,
            state,
            start,
            end,
            target: t,
        } => queue_cmd::jobs(&target(t), &queue, &state, start, end)
            .await
            .map(|()| true),
        Command::Pause { queue, target: t } => queue_cmd::pause(&target(t), &queue, true)
            .await
            .map(|()| true),
        Command::Resume { queue, target: t } => queue_cmd::pause(&target(t), &queue, false)
            .await
            .map(|()| true),
        Command::Drain {
            queue,
            delayed,
            target: t,
        } => queue_cmd::drain(&target(t), &queue, delayed)
            .await
            .map(|()| true),
        Command::Clean {
            queue,
            state,
            grace_ms,
            limit,
            target: t,
        } => queue_cmd::clean(&target(t), &queue, &state, grace_ms, limit)
            .await
            .map(|()| true),
        Command::Obliterate {
            queue,
            force,
            target: t,
        } => queue_cmd::obliterate(&target(t), &queue, force)
            .await
            .map(|()| true),
        Command::Retry {
            queue,
            id,
            state,
            target: t,
        } => queue_cmd::retry(&target(t), &queue, id.as_deref(), &state)
            .await
            .map(|()| true),
        Command::Promote {
            queue,
            id,
            target: t,
        } => queue_cmd::promote(&target(t), &queue, id.as_deref())
            .await
            .map(|()| true),
        Command::Work {
            queue,
            exec,
            concurrency,
            timeout_ms,
            max_jobs,
            exit_when_drained,
            grace_ms,
            lock_duration_ms,
            stalled_interval_ms,
            max_stalled_count,
            target: t,
        } => {
            let args = work_cmd::WorkArgs {
                exec,
                concurrency,
                timeout_ms,
                max_jobs,
                exit_when_drained,
                grace_ms,
                lock_duration_ms,
                stalled_interval_ms,
                max_stalled_count,
            };
            work_cmd::work(&target(t), &queue, args)
                .await
                .map(|()| true)
        }
        Command::Events {
            queue,
            from,
            json,
            target: t,
        } => events_cmd::events(&target(t), &queue, from, json)
            .await
            .map(|()| true),
        Command::Doctor { url, tls } => {
            return match run_doctor(&tls.apply(url)).await {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("bullpen doctor: {e}");
                    ExitCode::from(2)
                }
            }
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bullpen: {e}");
            ExitCode::from(2)
        }
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
