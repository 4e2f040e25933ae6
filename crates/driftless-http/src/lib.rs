//! # driftless-http
//!
//! An HTTP service for an embedded driftless [`Engine`]: started with one call, off until
//! then, bound to loopback unless told otherwise, synchronous (a few threads of its own;
//! no async runtime is asked of the embedder).
//!
//! | endpoint | answer |
//! |---|---|
//! | `GET /metrics` | the Prometheus text format: the engine's state gauges (recorded at each scrape), its counters and histograms, the reconciliation metrics, this service's requests |
//! | `GET /health` | `200 {"status":"ok"}` while the engine is open and writing; `503` once it is poisoned or shut down |
//! | `GET /freshness` | `{"read_models": [...]}`: each read model's [`Freshness`] and its `X-Data-Freshness-Seconds` value |
//! | `GET /read-models/{name}?from=&limit=` | a page of rows in key order, `{"read_model","rows":[{"key","row"}],"next"}` |
//! | `GET /read-models/{name}/{key}` | one row, `{"read_model","key","row"}`; `404` when there is none |
//! | `GET /report` | the drift report, one self-contained HTML page ([`report`]) |
//! | `POST /reconcile?mode=full\|sampled[&read_model=]` | runs reconciliation with the harness given ([`ServeOptions::reconciliation`]), for loopback clients only: the run's report as JSON |
//! | `GET /` | the endpoints and exposed read models |
//!
//! Every read-model answer carries `X-Data-Freshness-Seconds` (while the read model's
//! freshness is known and it is caught up); a read model whose kill switch is engaged
//! answers `503` with `{"error":"switched_off",...}`: read the source of truth. Errors are
//! JSON, `{"error": code, "message": sentence}`: `400` for a bad parameter or key, `403`,
//! `404` for an unknown path, read model or key, `405` (with `Allow`) for a wrong method,
//! `408` for a request head that does not arrive in time, `413` for a request with a body,
//! `431` for a head too long or with too many headers, `501` for `POST /reconcile` without
//! a harness, `503` when busy or when the engine is gone. Every answer closes its
//! connection.
//!
//! ```
//! use driftless_http::{serve, ServeOptions};
//! use driftless_listings::embed::engine_builder;
//! use driftless_listings::{DISTRICT_STATS, LISTING_CARD};
//! use std::sync::Arc;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let engine = Arc::new(engine_builder(dir.path().join("listings.redb")).open()?);
//! let service = serve(
//!     &engine,
//!     ServeOptions::new()                       // 127.0.0.1, a port the system picks
//!         .read_model(&LISTING_CARD)            // rows as the JSON of their serde form
//!         .read_model(&DISTRICT_STATS)
//!         .without_metrics(),                   // or .metrics(handle), or install one
//! )?;
//! println!("serving on http://{}", service.local_addr());
//! service.stop();                               // or drop it
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod http;
mod options;
pub mod report;
mod routes;
mod server;
pub mod text;

use driftless::{Engine, Event};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use driftless::Freshness;
pub use options::{
    KeyText, RowSerializer, ServeOptions, DEFAULT_ADDRESS, DEFAULT_MAX_HEAD_BYTES, DEFAULT_PAGE_ROWS,
    DEFAULT_QUEUE, DEFAULT_REQUEST_TIMEOUT, DEFAULT_WORKERS, DEFAULT_WRITE_TIMEOUT, MAX_PAGE_ROWS,
};
pub use report::{DriftReport, ReportOptions};
pub use routes::FRESHNESS_HEADER;
pub use server::MAX_HEADERS;

/// The names of the service's own metrics and labels.
pub mod metric_names {
    /// Counter: requests answered, by [`LABEL_ENDPOINT`] and [`LABEL_STATUS`].
    pub const REQUESTS_TOTAL: &str = "driftless_http_requests_total";
    /// Histogram: wall time of answering one request, by [`LABEL_ENDPOINT`].
    pub const REQUEST_SECONDS: &str = "driftless_http_request_seconds";
    /// Counter: connections answered `503` at once because every worker was busy and the
    /// queue full.
    pub const REJECTED_CONNECTIONS_TOTAL: &str = "driftless_http_rejected_connections_total";
    /// Label: the endpoint (`metrics`, `health`, `freshness`, `report`, `read_model`,
    /// `reconcile`, `index`, `other`).
    pub const LABEL_ENDPOINT: &str = "endpoint";
    /// Label: the status code.
    pub const LABEL_STATUS: &str = "status";
}

/// The buckets of every `_seconds` histogram: 100 µs to 1 min.
const SECONDS_BUCKETS: [f64; 14] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0, 60.0];
/// The buckets of `driftless_batch_events`.
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 8.0, 32.0, 128.0, 512.0, 1_000.0, 4_096.0, 16_384.0];

/// A Prometheus recorder builder with driftless's histogram buckets: every `_seconds`
/// metric and `driftless_batch_events` are Prometheus histograms (which aggregate across
/// instances), not summaries. Install it (`install_recorder`) and pass the handle to
/// [`ServeOptions::metrics`], or let [`serve`] install it.
#[must_use]
pub fn prometheus_builder() -> PrometheusBuilder {
    let batch = driftless::metric_names::BATCH_EVENTS.to_owned();
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(batch), &BATCH_BUCKETS))
        .unwrap_or_else(|_| PrometheusBuilder::new())
}

/// Describes the service's metrics, the engine's and the reconciler's to the installed
/// recorder.
pub fn describe_metrics() {
    driftless::describe_metrics();
    metrics::describe_counter!(metric_names::REQUESTS_TOTAL, metrics::Unit::Count, "HTTP requests answered.");
    metrics::describe_histogram!(
        metric_names::REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Wall time of answering one HTTP request."
    );
    metrics::describe_counter!(
        metric_names::REJECTED_CONNECTIONS_TOTAL,
        metrics::Unit::Count,
        "Connections answered 503 at once because every worker was busy."
    );
}

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address is not a loopback address and remote clients were not allowed.
    #[error(
        "{address} is not a loopback address; the service has no authentication, so it binds to \
         loopback unless remote clients are allowed (ServeOptions::allow_remote)"
    )]
    NotLoopback {
        /// The address asked for.
        address: SocketAddr,
    },
    /// A setting is out of range.
    #[error("the setting {setting} is invalid: {reason}")]
    InvalidSetting {
        /// The setting.
        setting: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The address could not be bound.
    #[error("could not listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The Prometheus recorder could not be installed (another recorder is installed:
    /// pass its handle with [`ServeOptions::metrics`], or serve no metrics).
    #[error("the Prometheus recorder could not be installed ({reason}); pass the handle of the installed one with ServeOptions::metrics, or use ServeOptions::without_metrics")]
    Metrics {
        /// Why.
        reason: String,
    },
    /// A thread of the service could not be started.
    #[error("a thread of the HTTP service could not be started: {0}")]
    Thread(#[source] std::io::Error),
}

/// A running service; stopped by [`Self::stop`] or when dropped.
#[derive(Debug)]
pub struct Service {
    transport: server::Transport,
    upkeep: Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>,
}

impl std::fmt::Debug for server::Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").field("address", &self.local_addr()).finish_non_exhaustive()
    }
}

impl Service {
    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Stops accepting connections, finishes the requests being answered, and joins the
    /// service's threads.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.transport.stop();
        if let Some((stop, handle)) = self.upkeep.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shut();
    }
}

/// How often the service runs the Prometheus recorder's upkeep (draining histograms), in
/// case nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Serves `engine` over HTTP as `options` say (see the crate documentation for the
/// endpoints). The service holds the engine weakly: it never keeps it open, and answers
/// `503` once it is gone. Stop the service before shutting the engine down.
///
/// # Errors
/// [`ServeError`] when the address is not loopback (without
/// [`ServeOptions::allow_remote`]), a setting is out of range, the address cannot be
/// bound, the Prometheus recorder cannot be installed, or a thread cannot be started.
pub fn serve<E: Event>(engine: &Arc<Engine<E>>, options: ServeOptions) -> Result<Service, ServeError> {
    let address = options.address;
    if !options.allow_remote && !address.ip().to_canonical().is_loopback() {
        return Err(ServeError::NotLoopback { address });
    }
    check(&options)?;
    let handle = match options.metrics {
        options::MetricsSource::Off => None,
        options::MetricsSource::Handle(handle) => Some(handle),
        options::MetricsSource::Install => {
            let handle = prometheus_builder()
                .install_recorder()
                .map_err(|e| ServeError::Metrics { reason: e.to_string() })?;
            describe_metrics();
            Some(handle)
        }
    };
    let listener = TcpListener::bind(address).map_err(|source| ServeError::Bind { address, source })?;
    let limits = server::Limits {
        workers: options.workers,
        queue: options.queue,
        max_head_bytes: options.max_head_bytes,
        request_timeout: options.request_timeout,
        write_timeout: options.write_timeout,
    };
    let upkeep = match &handle {
        Some(h) => Some(start_upkeep(h.clone())?),
        None => None,
    };
    let app = routes::App {
        source: Box::new(routes::EngineSource(Arc::downgrade(engine))),
        read_models: options.read_models,
        metrics: handle,
        harness: options.harness,
        report: options.report,
    };
    let handler: Arc<server::Handler> = Arc::new(move |request: &http::Request| app.handle(request));
    let transport = server::Transport::start(listener, limits, handler).map_err(ServeError::Thread)?;
    tracing::info!(address = %transport.local_addr(), "serving driftless over HTTP");
    Ok(Service { transport, upkeep })
}

fn check(o: &ServeOptions) -> Result<(), ServeError> {
    let invalid = |setting, reason| Err(ServeError::InvalidSetting { setting, reason });
    if o.workers == 0 || o.workers > 256 {
        return invalid("workers", "it must be from 1 to 256");
    }
    if o.queue == 0 {
        return invalid("queue", "it must be at least 1");
    }
    if o.max_head_bytes < 1024 {
        return invalid("max_head_bytes", "it must be at least 1024 bytes");
    }
    if o.request_timeout.is_zero() || o.write_timeout.is_zero() {
        return invalid("request_timeout and write_timeout", "they must be longer than zero");
    }
    Ok(())
}

fn start_upkeep(
    handle: PrometheusHandle,
) -> Result<(crossbeam_channel::Sender<()>, JoinHandle<()>), ServeError> {
    let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
    let thread = std::thread::Builder::new()
        .name("driftless-http-upkeep".into())
        .spawn(move || {
            while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = stopped.recv_timeout(UPKEEP_EVERY) {
                handle.run_upkeep();
            }
        })
        .map_err(ServeError::Thread)?;
    Ok((stop, thread))
}
