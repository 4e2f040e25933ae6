//! Asking a running `driftless run --listen ADDR` what its database holds.
//!
//! redb locks the file for the process that has it open, so while `run` serves a database
//! no other process can open it. `run --listen` records where it serves in a small file
//! beside the database, `<db>.serving` (`{"address": "127.0.0.1:9184", "pid": 4242}`), and
//! removes it when it stops. A read command that finds the database in use reads that file,
//! checks that the process answering there is the one that wrote it (`GET /health` says its
//! pid), and asks it over HTTP instead.

use crate::error::CliError;
use driftless::reconcile::{ReconcileMode, RunReport};
use driftless::Freshness;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one request to the serving process may take (a full reconciliation of a
/// large database is the longest).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// How long finding out whether the recorded process is there may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Rows asked for per page.
const PAGE_ROWS: usize = 1_000;

/// What `run --listen` records beside the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Serving {
    /// Where it serves.
    pub address: SocketAddr,
    /// Its process id.
    pub pid: u32,
}

/// The file beside `db` that says where it is served: `<db>.serving`.
pub fn serving_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".serving");
    PathBuf::from(name)
}

/// The record of this process serving `db` at `address`; the file is removed when it is
/// dropped (if it still names this process).
#[derive(Debug)]
pub struct ServingRecord {
    path: PathBuf,
}

impl ServingRecord {
    /// Writes `<db>.serving` for this process (a new file replaces an older one whole).
    pub fn write(db: &Path, address: SocketAddr) -> Result<Self, CliError> {
        let path = serving_path(db);
        let record = Serving { address, pid: std::process::id() };
        let text = serde_json::to_string(&record).map_err(|e| CliError::Failed(e.to_string()))?;
        let mut temporary = path.clone().into_os_string();
        temporary.push(".tmp");
        let temporary = PathBuf::from(temporary);
        let what = |e| CliError::io(format!("could not write {}", path.display()), e);
        std::fs::write(&temporary, text + "\n").map_err(what)?;
        std::fs::rename(&temporary, &path).map_err(what)?;
        Ok(Self { path })
    }
}

impl Drop for ServingRecord {
    fn drop(&mut self) {
        let ours = read_record(&self.path).is_some_and(|r| r.pid == std::process::id());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn read_record(path: &Path) -> Option<Serving> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// A running service of the database, found through its `<db>.serving` file.
#[derive(Debug)]
pub struct Live {
    serving: Serving,
    agent: ureq::Agent,
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into()
}

/// The service of `db` if `<db>.serving` names a process that answers there as itself.
pub fn find(db: &Path) -> Option<Live> {
    let serving = read_record(&serving_path(db))?;
    let probe = Live { serving, agent: agent(PROBE_TIMEOUT) };
    let (status, body) = probe.request("GET", "/health").ok()?;
    let pid = serde_json::from_str::<Value>(&body).ok()?.get("pid")?.as_u64()?;
    if pid != u64::from(serving.pid) {
        tracing::warn!(address = %serving.address, "the process at the recorded address is not the one serving the database");
        return None;
    }
    if status != 200 {
        tracing::warn!(address = %serving.address, status, "the serving process says it is not healthy");
    }
    Some(Live { serving, agent: agent(REQUEST_TIMEOUT) })
}

/// An error body's `error` and `message`.
fn error_of(body: &str) -> (String, String) {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let text = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    (text("error"), text("message"))
}

impl Live {
    /// Who is being asked, for messages: `the process 4242 serving it at http://...`.
    pub fn who(&self) -> String {
        format!("the process {} serving it at http://{}", self.serving.pid, self.serving.address)
    }

    fn request(&self, method: &str, path: &str) -> Result<(u16, String), CliError> {
        let url = format!("http://{}{path}", self.serving.address);
        let sent = match method {
            "POST" => self.agent.post(&url).send_empty(),
            _ => self.agent.get(&url).call(),
        };
        let failed = |e: ureq::Error| CliError::Failed(format!("could not ask {}: {e}", self.who()));
        let mut response = sent.map_err(failed)?;
        let status = response.status().as_u16();
        let body = response.body_mut().with_config().limit(256 << 20).read_to_string().map_err(failed)?;
        Ok((status, body))
    }

    /// `GET path`, a 200 answer's body, or the error the answer says.
    fn ok(&self, method: &str, path: &str) -> Result<String, CliError> {
        let (status, body) = self.request(method, path)?;
        if status == 200 {
            return Ok(body);
        }
        let (code, message) = error_of(&body);
        Err(match code.as_str() {
            "switched_off" => {
                let value: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let text =
                    |name: &str| value.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
                CliError::SwitchedOff { read_model: text("read_model"), since: text("since") }
            }
            _ => CliError::Failed(format!("{} answered {status}: {message}", self.who())),
        })
    }

    fn json<T: DeserializeOwned>(&self, body: &str) -> Result<T, CliError> {
        serde_json::from_str(body)
            .map_err(|e| CliError::Failed(format!("{} answered something unexpected: {e}", self.who())))
    }

    /// Every read model's freshness.
    pub fn freshness(&self) -> Result<Vec<Freshness>, CliError> {
        #[derive(Deserialize)]
        struct Answer {
            read_models: Vec<Freshness>,
        }
        let answer: Answer = self.json(&self.ok("GET", "/freshness")?)?;
        Ok(answer.read_models)
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics(&self) -> Result<String, CliError> {
        self.ok("GET", "/metrics")
    }

    /// The drift report's HTML.
    pub fn report(&self) -> Result<String, CliError> {
        self.ok("GET", "/report")
    }

    /// The row of `key` in `read_model` (`None` when there is none).
    pub fn row<V: DeserializeOwned>(&self, read_model: &str, key: &str) -> Result<Option<V>, CliError> {
        let path = format!("/read-models/{read_model}/{}", segment(key));
        let (status, body) = self.request("GET", &path)?;
        if status == 404 && error_of(&body).0 == "unknown_key" {
            return Ok(None);
        }
        let body = if status == 200 { body } else { self.ok("GET", &path)? };
        let value: Value = self.json(&body)?;
        let row = value.get("row").cloned().unwrap_or(Value::Null);
        serde_json::from_value(row)
            .map(Some)
            .map_err(|e| CliError::Failed(format!("{} answered a row that does not read: {e}", self.who())))
    }

    /// Every row of `read_model`, in key order, a page at a time.
    pub fn rows<V: DeserializeOwned>(&self, read_model: &str) -> Result<Vec<V>, CliError> {
        #[derive(Deserialize)]
        struct Entry<V> {
            row: V,
        }
        #[derive(Deserialize)]
        struct Page<V> {
            rows: Vec<Entry<V>>,
            next: Option<String>,
        }
        let mut rows = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!("/read-models/{read_model}?limit={PAGE_ROWS}");
            if let Some(key) = &from {
                path.push_str("&from=");
                path.extend(form_urlencoded::byte_serialize(key.as_bytes()));
            }
            let page: Page<V> = self.json(&self.ok("GET", &path)?)?;
            rows.extend(page.rows.into_iter().map(|e| e.row));
            match page.next {
                Some(next) => from = Some(next),
                None => return Ok(rows),
            }
        }
    }

    /// Runs reconciliation in the serving process.
    pub fn reconcile(&self, mode: ReconcileMode, read_model: Option<&str>) -> Result<RunReport, CliError> {
        let mut path = format!("/reconcile?mode={}", mode.as_str());
        if let Some(name) = read_model {
            path.push_str("&read_model=");
            path.extend(form_urlencoded::byte_serialize(name.as_bytes()));
        }
        let (status, body) = self.request("POST", &path)?;
        if status == 409 {
            let (_, message) = error_of(&body);
            return Err(CliError::Failed(message));
        }
        let body = if status == 200 { body } else { self.ok("POST", &path)? };
        self.json(&body)
    }
}

/// `key` as one percent-encoded path segment.
fn segment(key: &str) -> String {
    percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_sits_beside_the_database_and_is_removed_with_its_writer(
    ) -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("x.redb");
        assert_eq!(serving_path(&db), dir.path().join("x.redb.serving"));
        let address: SocketAddr = "127.0.0.1:9184".parse()?;
        let record = ServingRecord::write(&db, address)?;
        assert_eq!(read_record(&serving_path(&db)), Some(Serving { address, pid: std::process::id() }));
        drop(record);
        assert!(!serving_path(&db).exists());
        // Nobody answers at a recorded address: no service.
        std::fs::write(serving_path(&db), r#"{"address":"127.0.0.1:9","pid":1}"#)?;
        assert!(find(&db).is_none());
        Ok(())
    }

    #[test]
    fn keys_are_one_path_segment() {
        assert_eq!(segment("l-1"), "l%2D1");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
