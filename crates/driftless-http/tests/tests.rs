//! The service over a real listening socket: every endpoint through an HTTP client, bad
//! requests through a raw TCP stream, concurrent scrapes during an ingest, and the drift
//! report in a real browser.

use driftless::reconcile::ReconcileHarness;
use driftless::{codec, Engine, ViewKey};
use driftless_http::{prometheus_builder, serve, ServeOptions, Service};
use driftless_listings::embed::{engine_builder, reconcilers};
use driftless_listings::{
    generate_events, GenConfig, ListingCard, ListingEvent, DISTRICT_STATS, LISTING_CARD,
};
use metrics_exporter_prometheus::PrometheusHandle;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod browser;
mod service;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// The process's Prometheus recorder, installed once and shared by every test.
fn metrics_handle() -> TestResult<PrometheusHandle> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        let handle = prometheus_builder().install_recorder().map_err(|e| e.to_string())?;
        driftless_http::describe_metrics();
        Ok(handle)
    });
    Ok(handle.clone()?)
}

/// An engine over the sample domain with `events` generated events applied, and a
/// reconciliation harness over it.
struct Fixture {
    _dir: tempfile::TempDir,
    engine: Arc<Engine<ListingEvent>>,
    harness: Arc<ReconcileHarness>,
}

fn fixture(events: usize) -> TestResult<Fixture> {
    let dir = tempfile::tempdir()?;
    let engine = Arc::new(engine_builder(dir.path().join("listings.redb")).open()?);
    if events > 0 {
        let config = GenConfig { events, listings: events / 5 + 1, districts: 4, ..GenConfig::default() };
        engine.dispatch_batch(generate_events(config))?.wait()?;
    }
    let harness = engine
        .reconciliation()
        .reconcilers(reconcilers(Arc::clone(engine.store())))
        .owner("http-test")
        .build()?;
    Ok(Fixture { _dir: dir, engine, harness: Arc::new(harness) })
}

impl Fixture {
    /// Serves the engine with both read models, the harness and the shared metrics.
    fn serve(&self, options: ServeOptions) -> TestResult<Service> {
        let options = options
            .read_model(&LISTING_CARD)
            .read_model(&DISTRICT_STATS)
            .reconciliation(Arc::clone(&self.harness))
            .metrics(metrics_handle()?);
        Ok(serve(&self.engine, options)?)
    }

    /// Raises the price of the first `n` listing cards behind the projector's back.
    fn tamper(&self, n: usize) -> TestResult<Vec<String>> {
        let driftless::ReadAnswer::Ready(cards) = self.engine.read(&LISTING_CARD)? else {
            return Err("listing_card is switched off".into());
        };
        let rows: Vec<(String, ListingCard)> = cards.iter()?.take(n).collect::<Result<_, _>>()?;
        let mut keys = Vec::new();
        for (key, mut card) in rows {
            card.price += 1;
            self.engine.chaos_tamper_row(
                "listing_card",
                &key.to_key_bytes(),
                Some(&codec::encode(&card)?),
            )?;
            keys.push(key);
        }
        Ok(keys)
    }
}

/// An answer: status, headers (names in lower case) and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> TestResult<serde_json::Value> {
        Ok(serde_json::from_str(&self.body)?)
    }

    /// The `error` code of a JSON error body.
    fn error(&self) -> Option<String> {
        self.json().ok()?.get("error")?.as_str().map(str::to_owned)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn answer(mut response: ureq::http::Response<ureq::Body>) -> TestResult<Answer> {
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = response.body_mut().read_to_string()?;
    Ok(Answer { status, headers, body })
}

/// `GET http://{addr}{path}` with a real HTTP client.
fn get(addr: SocketAddr, path: &str) -> TestResult<Answer> {
    answer(agent().get(format!("http://{addr}{path}")).call()?)
}

/// `POST http://{addr}{path}` without a body.
fn post(addr: SocketAddr, path: &str) -> TestResult<Answer> {
    answer(agent().post(format!("http://{addr}{path}")).send_empty()?)
}

/// Sends `bytes` as they are and reads the answer until the service closes.
fn raw(addr: SocketAddr, bytes: &[u8]) -> TestResult<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(bytes)?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok((status_of(&text)?, text))
}

fn status_of(text: &str) -> TestResult<u16> {
    let status = text.split(' ').nth(1).ok_or_else(|| format!("no status line in {text:?}"))?;
    Ok(status.parse()?)
}
