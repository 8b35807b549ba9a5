//! Job-level operations shared by the producer and the worker: progress, logs, data.

use bullpen_conn::Connection;

use crate::error::{Error, RefusalCode, Result};
use crate::keys::QueueKeys;
use crate::script::{ADD_LOG, UPDATE_DATA, UPDATE_PROGRESS};

fn refused(script: &'static str, job_id: &str, code: i64) -> Error {
    Error::Refused {
        script,
        job_id: job_id.into(),
        code: RefusalCode::from_code(code),
    }
}

/// Stores a job's progress (JSON text) and emits `progress`. `max_len_events` is used when
/// `meta` has no `opts.maxLenEvents`.
pub async fn update_progress(
    conn: &Connection,
    keys: &QueueKeys,
    job_id: &str,
    progress_json: &str,
    max_len_events: u64,
) -> Result<()> {
    let k = [keys.job(job_id), keys.key("events"), keys.key("meta")];
    let args = [job_id, progress_json, &max_len_events.to_string()];
    let r: i64 = UPDATE_PROGRESS.run(conn, &k, &args).await?;
    if r < 0 {
        return Err(refused(UPDATE_PROGRESS.name(), job_id, r));
    }
    Ok(())
}

/// Appends a log line, keeping at most `keep_logs` lines when given. Returns the count kept.
pub async fn add_log(
    conn: &Connection,
    keys: &QueueKeys,
    job_id: &str,
    line: &str,
    keep_logs: Option<u64>,
) -> Result<u64> {
    let k = [keys.job(job_id), keys.job_sub(job_id, "logs")];
    let keep = keep_logs.map(|k| k.to_string()).unwrap_or_default();
    let r: i64 = ADD_LOG.run(conn, &k, &[line, keep.as_str()]).await?;
    u64::try_from(r).map_err(|_| refused(ADD_LOG.name(), job_id, r))
}

/// Replaces a job's data (JSON text). No event, as in BullMQ.
pub async fn update_data(
    conn: &Connection,
    keys: &QueueKeys,
    job_id: &str,
    data_json: &str,
) -> Result<()> {
    let r: i64 = UPDATE_DATA
        .run(conn, &[keys.job(job_id)], &[data_json])
        .await?;
    if r < 0 {
        return Err(refused(UPDATE_DATA.name(), job_id, r));
    }
    Ok(())
}
