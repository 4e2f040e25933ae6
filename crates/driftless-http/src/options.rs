//! What a service serves and how: its address, the read models it exposes, the metrics
//! handle, the reconciliation harness, and its bounds.

use crate::report::ReportOptions;
use driftless::reconcile::ReconcileHarness;
use driftless::{ReadAnswer, ReadError, Store, TableDef, Timestamp, ViewKey, ViewValue};
use metrics_exporter_prometheus::PrometheusHandle;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Bound;
use std::sync::Arc;
use std::time::Duration;

/// The default address: the IPv4 loopback address, on a port the system picks.
pub const DEFAULT_ADDRESS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
/// The default number of worker threads (connections answered at once).
pub const DEFAULT_WORKERS: usize = 4;
/// The default number of accepted connections that may wait for a worker; more are
/// answered `503` at once.
pub const DEFAULT_QUEUE: usize = 32;
/// The default longest request head (request line and headers).
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// The default time a client has to send its request head.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The default time one write of an answer may block.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The default number of rows of one page of `GET /read-models/{name}`.
pub const DEFAULT_PAGE_ROWS: usize = 100;
/// The most rows one page may ask for.
pub const MAX_PAGE_ROWS: usize = 1_000;

/// A key type that reads from and prints as the text of a URL path segment
/// (`GET /read-models/{name}/{key}`, `?from=`).
pub trait KeyText: ViewKey {
    /// The key of `text`, or `None` when `text` is not one.
    fn from_text(text: &str) -> Option<Self>;
    /// The key as text.
    fn to_text(&self) -> String;
    /// What a key looks like, for an error message (`"text"`, `"a whole number"`).
    fn expected() -> &'static str;
}

impl KeyText for String {
    fn from_text(text: &str) -> Option<Self> {
        Some(text.to_owned())
    }
    fn to_text(&self) -> String {
        self.clone()
    }
    fn expected() -> &'static str {
        "text"
    }
}

impl KeyText for u64 {
    fn from_text(text: &str) -> Option<Self> {
        text.parse().ok()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn expected() -> &'static str {
        "a whole number from 0"
    }
}

impl KeyText for i64 {
    fn from_text(text: &str) -> Option<Self> {
        text.parse().ok()
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
    fn expected() -> &'static str {
        "a whole number"
    }
}

/// Turns a row into the JSON the service answers with.
pub type RowSerializer<V> = Arc<dyn Fn(&V) -> Result<serde_json::Value, String> + Send + Sync>;

/// What a read-model route is asked.
pub(crate) enum RowsQuery<'a> {
    /// The row of one key (its text).
    One(&'a str),
    /// Up to `limit` rows from the key `from` (its text) on, in key order.
    Page { from: Option<&'a str>, limit: usize },
}

/// What a read-model route answers.
pub(crate) enum RowsAnswer {
    /// The row of the key asked for, if any.
    One(Option<serde_json::Value>),
    /// A page of `(key, row)` and the key of the next row after it, if any.
    Page { rows: Vec<(String, serde_json::Value)>, next: Option<String> },
    /// The kill switch is engaged: read the source of truth.
    SwitchedOff { since: Timestamp },
}

/// Why a read-model route could not answer.
#[derive(Debug)]
pub(crate) enum RowsError {
    /// The key text is not a key of the read model.
    BadKey { text: String, expected: &'static str },
    /// Reading failed.
    Read(ReadError),
    /// A row could not be turned into JSON.
    Serialize(String),
}

impl From<ReadError> for RowsError {
    fn from(e: ReadError) -> Self {
        Self::Read(e)
    }
}

/// One exposed read model, type-erased.
pub(crate) type RowsRoute = dyn Fn(&Store, RowsQuery<'_>) -> Result<RowsAnswer, RowsError> + Send + Sync;

fn parse_key<K: KeyText>(text: &str) -> Result<K, RowsError> {
    K::from_text(text).ok_or_else(|| RowsError::BadKey { text: text.to_owned(), expected: K::expected() })
}

fn route<K: KeyText, V: ViewValue>(def: TableDef<K, V>, serialize: RowSerializer<V>) -> Arc<RowsRoute> {
    Arc::new(move |store: &Store, query: RowsQuery<'_>| {
        let repo = match store.read(&def)? {
            ReadAnswer::Ready(repo) => repo,
            ReadAnswer::UseSourceOfTruth { since, .. } => return Ok(RowsAnswer::SwitchedOff { since }),
        };
        match query {
            RowsQuery::One(text) => {
                let key = parse_key::<K>(text)?;
                let row =
                    repo.get(&key)?.map(|row| serialize(&row).map_err(RowsError::Serialize)).transpose()?;
                Ok(RowsAnswer::One(row))
            }
            RowsQuery::Page { from, limit } => {
                let start = match from {
                    Some(text) => Bound::Included(parse_key::<K>(text)?),
                    None => Bound::Unbounded,
                };
                let mut rows = Vec::with_capacity(limit.min(MAX_PAGE_ROWS));
                let mut next = None;
                for item in repo.range((start, Bound::Unbounded))? {
                    let (key, row) = item?;
                    if rows.len() == limit {
                        next = Some(key.to_text());
                        break;
                    }
                    rows.push((key.to_text(), serialize(&row).map_err(RowsError::Serialize)?));
                }
                Ok(RowsAnswer::Page { rows, next })
            }
        }
    })
}

/// Settings of a service: see [`crate::serve`].
///
/// By default it listens on [`DEFAULT_ADDRESS`] (loopback, a port the system picks),
/// refuses a non-loopback address, exposes no read model's rows, installs a Prometheus
/// recorder for `/metrics` (see [`Self::metrics`]), and runs no reconciliation.
#[must_use = "options do nothing until passed to `serve`"]
pub struct ServeOptions {
    pub(crate) address: SocketAddr,
    pub(crate) allow_remote: bool,
    pub(crate) read_models: BTreeMap<String, Arc<RowsRoute>>,
    pub(crate) metrics: MetricsSource,
    pub(crate) harness: Option<Arc<ReconcileHarness>>,
    pub(crate) report: ReportOptions,
    pub(crate) workers: usize,
    pub(crate) queue: usize,
    pub(crate) max_head_bytes: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) write_timeout: Duration,
}

/// Where `GET /metrics` takes its text from.
pub(crate) enum MetricsSource {
    /// Install a Prometheus recorder ([`crate::prometheus_builder`]) as the global one
    /// when the service starts.
    Install,
    /// Render this handle (of a recorder the embedder installed).
    Handle(PrometheusHandle),
    /// No metrics endpoint: `GET /metrics` answers 404.
    Off,
}

impl fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeOptions")
            .field("address", &self.address)
            .field("allow_remote", &self.allow_remote)
            .field("read_models", &self.read_models.keys().collect::<Vec<_>>())
            .field("reconciliation", &self.harness.is_some())
            .field("workers", &self.workers)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self {
            address: DEFAULT_ADDRESS,
            allow_remote: false,
            read_models: BTreeMap::new(),
            metrics: MetricsSource::Install,
            harness: None,
            report: ReportOptions::default(),
            workers: DEFAULT_WORKERS,
            queue: DEFAULT_QUEUE,
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }

    /// Listens on `address` (port 0: one the system picks; [`crate::Service::local_addr`]
    /// tells which). A non-loopback address is refused unless [`Self::allow_remote`].
    pub fn address(mut self, address: SocketAddr) -> Self {
        self.address = address;
        self
    }

    /// Allows a non-loopback address: the service then answers anyone who can reach it.
    /// It has no authentication; put it behind something that has. `POST /reconcile`
    /// still answers loopback clients only.
    pub fn allow_remote(mut self, allow: bool) -> Self {
        self.allow_remote = allow;
        self
    }

    /// Exposes the rows of `def` under `GET /read-models/{name}` and
    /// `GET /read-models/{name}/{key}`, as the JSON of their serde form.
    pub fn read_model<K: KeyText, V: ViewValue>(self, def: &TableDef<K, V>) -> Self {
        self.read_model_with(def, |row: &V| serde_json::to_value(row).map_err(|e| e.to_string()))
    }

    /// As [`Self::read_model`], with the JSON of each row made by `serialize` (to leave out
    /// or rename fields).
    pub fn read_model_with<K: KeyText, V: ViewValue>(
        mut self,
        def: &TableDef<K, V>,
        serialize: impl Fn(&V) -> Result<serde_json::Value, String> + Send + Sync + 'static,
    ) -> Self {
        self.read_models.insert(def.name().to_owned(), route(*def, Arc::new(serialize)));
        self
    }

    /// Renders `GET /metrics` from `handle`, the handle of a Prometheus recorder the
    /// embedder installed (see [`crate::prometheus_builder`]), instead of installing one.
    pub fn metrics(mut self, handle: PrometheusHandle) -> Self {
        self.metrics = MetricsSource::Handle(handle);
        self
    }

    /// Serves no `GET /metrics` (it answers 404), and installs no recorder.
    pub fn without_metrics(mut self) -> Self {
        self.metrics = MetricsSource::Off;
        self
    }

    /// Runs reconciliation on `POST /reconcile` with `harness` (for loopback clients
    /// only), and judges the report's drift by its policy's threshold.
    pub fn reconciliation(mut self, harness: Arc<ReconcileHarness>) -> Self {
        self.report.breach_ppm = harness.policy().drift.breach_ppm;
        self.harness = Some(harness);
        self
    }

    /// What `GET /report` shows (its title, threshold and read models).
    pub fn report(mut self, report: ReportOptions) -> Self {
        self.report = report;
        self
    }

    /// Worker threads: how many connections are answered at once (at least 1; default
    /// [`DEFAULT_WORKERS`]).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// How many accepted connections may wait for a worker (default [`DEFAULT_QUEUE`]);
    /// more are answered `503` at once.
    pub fn queue(mut self, connections: usize) -> Self {
        self.queue = connections;
        self
    }

    /// The longest request head in bytes (default [`DEFAULT_MAX_HEAD_BYTES`]); a longer
    /// one is answered `431`.
    pub fn max_head_bytes(mut self, bytes: usize) -> Self {
        self.max_head_bytes = bytes;
        self
    }

    /// How long a client has to send its request head (default
    /// [`DEFAULT_REQUEST_TIMEOUT`]); a slower one is answered `408`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long one write of an answer may block (default [`DEFAULT_WRITE_TIMEOUT`]).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout;
        self
    }
}
