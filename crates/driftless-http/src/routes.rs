//! The endpoints: what each path answers.

use crate::http::{Method, Request, Response, HTML, PROMETHEUS};
use crate::metric_names as m;
use crate::options::{RowsAnswer, RowsError, RowsQuery, RowsRoute, DEFAULT_PAGE_ROWS, MAX_PAGE_ROWS};
use crate::report::{DriftReport, ReportOptions};
use driftless::reconcile::{HarnessError, ReconcileHarness, ReconcileMode};
use driftless::{Engine, EngineError, Event, Freshness, ReadError, Store, Timestamp};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// The header that says how old a read model's data is.
pub const FRESHNESS_HEADER: &str = "X-Data-Freshness-Seconds";

/// Where the engine stands, for `/health`.
pub(crate) enum Status {
    /// Open and writing.
    Open,
    /// Stopped writing after a storage failure.
    Poisoned(String),
    /// Shut down or dropped.
    Gone,
}

/// The engine, type-erased: what the endpoints need of it.
pub(crate) trait Source: Send + Sync {
    fn status(&self) -> Status;
    fn store(&self) -> Option<Arc<Store>>;
    fn freshness(&self) -> Result<Vec<Freshness>, EngineError>;
    fn record_gauges(&self) -> Result<(), EngineError>;
    fn report(&self, options: &ReportOptions) -> Result<DriftReport, EngineError>;
}

/// An engine held weakly: the service never keeps it open, and says so once it is gone.
pub(crate) struct EngineSource<E: Event>(pub(crate) Weak<Engine<E>>);

impl<E: Event> EngineSource<E> {
    fn engine(&self) -> Result<Arc<Engine<E>>, EngineError> {
        self.0.upgrade().ok_or(EngineError::ShutDown)
    }
}

impl<E: Event> Source for EngineSource<E> {
    fn status(&self) -> Status {
        match self.0.upgrade() {
            None => Status::Gone,
            Some(engine) => match engine.store().poisoned() {
                Some(p) => Status::Poisoned(p.first_failure),
                None => Status::Open,
            },
        }
    }

    fn store(&self) -> Option<Arc<Store>> {
        self.0.upgrade().map(|e| Arc::clone(e.store()))
    }

    fn freshness(&self) -> Result<Vec<Freshness>, EngineError> {
        self.engine()?.freshness()
    }

    fn record_gauges(&self) -> Result<(), EngineError> {
        self.engine()?.record_gauges()
    }

    fn report(&self, options: &ReportOptions) -> Result<DriftReport, EngineError> {
        DriftReport::collect(self.engine()?.as_ref(), options)
    }
}

/// An exposed read model's route, the store to read, and its freshness header value.
type Exposed = (Arc<RowsRoute>, Arc<Store>, Option<String>);

/// The endpoints and what they serve.
pub(crate) struct App {
    pub(crate) source: Box<dyn Source>,
    pub(crate) read_models: BTreeMap<String, Arc<RowsRoute>>,
    pub(crate) metrics: Option<PrometheusHandle>,
    pub(crate) harness: Option<Arc<ReconcileHarness>>,
    pub(crate) report: ReportOptions,
}

/// The endpoints, as `(label, path pattern, method)`.
const ENDPOINTS: [(&str, &str, &str); 8] = [
    ("index", "/", "GET"),
    ("metrics", "/metrics", "GET"),
    ("health", "/health", "GET"),
    ("freshness", "/freshness", "GET"),
    ("report", "/report", "GET"),
    ("read_model", "/read-models/{name}?from=&limit=", "GET"),
    ("read_model", "/read-models/{name}/{key}", "GET"),
    ("reconcile", "/reconcile?mode=full|sampled&read_model=", "POST"),
];

impl App {
    /// Answers `request`, and counts and times it by endpoint and status.
    pub(crate) fn handle(&self, request: &Request) -> Response {
        let started = Instant::now();
        let (endpoint, response) = self.route(request);
        let status = response.status.to_string();
        metrics::counter!(m::REQUESTS_TOTAL, m::LABEL_ENDPOINT => endpoint, m::LABEL_STATUS => status)
            .increment(1);
        metrics::histogram!(m::REQUEST_SECONDS, m::LABEL_ENDPOINT => endpoint)
            .record(started.elapsed().as_secs_f64());
        response
    }

    fn route(&self, request: &Request) -> (&'static str, Response) {
        let segments = match decode_path(&request.path) {
            Ok(s) => s,
            Err(response) => return ("other", response),
        };
        let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
        let (endpoint, method) = match parts.as_slice() {
            [""] => ("index", Method::Get),
            ["metrics"] => ("metrics", Method::Get),
            ["health"] => ("health", Method::Get),
            ["freshness"] => ("freshness", Method::Get),
            ["report"] => ("report", Method::Get),
            ["read-models", name] | ["read-models", name, _] if !name.is_empty() => {
                ("read_model", Method::Get)
            }
            ["reconcile"] => ("reconcile", Method::Post),
            _ => {
                let message = format!("there is no endpoint at {}; GET / lists them", request.path);
                return ("other", Response::error(404, "not_found", message));
            }
        };
        if request.method != method {
            let message = format!(
                "{} does not take {}; it answers {}",
                request.path,
                request.method.as_str(),
                method.as_str()
            );
            return (
                endpoint,
                Response::error(405, "method_not_allowed", message).with_header("Allow", method.as_str()),
            );
        }
        let response = match parts.as_slice() {
            [""] => self.index(&request.query),
            ["metrics"] => self.metrics(&request.query),
            ["health"] => self.health(&request.query),
            ["freshness"] => self.freshness(&request.query),
            ["report"] => self.report(&request.query),
            ["read-models", name] => self.page(name, &request.query),
            ["read-models", name, key] => self.one(name, key, &request.query),
            _ => self.reconcile(request),
        };
        (endpoint, response)
    }

    fn index(&self, query: &str) -> Response {
        if let Err(r) = parse_query(query, &[]) {
            return r;
        }
        let endpoints: Vec<Value> =
            ENDPOINTS.iter().map(|(_, path, method)| json!({ "method": method, "path": path })).collect();
        Response::json(
            200,
            &json!({
                "service": "driftless",
                "endpoints": endpoints,
                "read_models": self.read_models.keys().collect::<Vec<_>>(),
                "reconcile": self.harness.is_some(),
            }),
        )
    }

    fn metrics(&self, query: &str) -> Response {
        if let Err(r) = parse_query(query, &[]) {
            return r;
        }
        let Some(handle) = &self.metrics else {
            return Response::error(404, "not_found", "this service serves no metrics");
        };
        if let Err(e) = self.source.record_gauges() {
            // The counters are still worth answering with; the gauges keep their last values.
            tracing::warn!(error = %e, "the state gauges could not be recorded for a scrape");
        }
        handle.run_upkeep();
        Response::new(200, PROMETHEUS, handle.render())
    }

    fn health(&self, query: &str) -> Response {
        if let Err(r) = parse_query(query, &[]) {
            return r;
        }
        let pid = std::process::id();
        match self.source.status() {
            Status::Open => Response::json(200, &json!({ "status": "ok", "pid": pid })),
            Status::Poisoned(reason) => Response::json(
                503,
                &json!({
                    "status": "poisoned",
                    "pid": pid,
                    "message": format!("the engine stopped writing after a storage failure ({reason}); reopen it"),
                }),
            ),
            Status::Gone => Response::json(
                503,
                &json!({ "status": "shut_down", "pid": pid, "message": "the engine is shut down" }),
            ),
        }
    }

    fn freshness(&self, query: &str) -> Response {
        if let Err(r) = parse_query(query, &[]) {
            return r;
        }
        match self.source.freshness() {
            Ok(rows) => {
                let rows: Vec<Value> = rows.iter().map(freshness_json).collect();
                Response::json(200, &json!({ "read_models": rows }))
            }
            Err(e) => engine_error(&e),
        }
    }

    fn report(&self, query: &str) -> Response {
        if let Err(r) = parse_query(query, &[]) {
            return r;
        }
        match self.source.report(&self.report) {
            Ok(report) => Response::new(200, HTML, report.to_html()),
            Err(e) => engine_error(&e),
        }
    }

    /// The route of `name` and the freshness header of its answers, or the answer that
    /// there is no such read model.
    fn read_model(&self, name: &str) -> Result<Exposed, Response> {
        let Some(route) = self.read_models.get(name) else {
            let exposed: Vec<&str> = self.read_models.keys().map(String::as_str).collect();
            let message = if exposed.is_empty() {
                format!("there is no read model {name:?}: this service exposes none")
            } else {
                format!("there is no read model {name:?}; this service exposes {}", exposed.join(", "))
            };
            return Err(Response::error(404, "unknown_read_model", message));
        };
        let Some(store) = self.source.store() else { return Err(engine_error(&EngineError::ShutDown)) };
        let header = match self.source.freshness() {
            Ok(rows) => rows.iter().find(|f| f.read_model == name).and_then(Freshness::header_value),
            Err(e) => return Err(engine_error(&e)),
        };
        Ok((Arc::clone(route), store, header))
    }

    fn page(&self, name: &str, query: &str) -> Response {
        let params = match parse_query(query, &["from", "limit"]) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let limit = match params.get("limit") {
            None => DEFAULT_PAGE_ROWS,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE_ROWS).contains(&n) => n,
                _ => {
                    let message =
                        format!("limit must be a whole number from 1 to {MAX_PAGE_ROWS}, not {text:?}");
                    return Response::error(400, "bad_parameter", message);
                }
            },
        };
        let (route, store, header) = match self.read_model(name) {
            Ok(found) => found,
            Err(r) => return r,
        };
        let from = params.get("from").map(String::as_str);
        let answer = route(&store, RowsQuery::Page { from, limit });
        let response = match answer {
            Ok(RowsAnswer::Page { rows, next }) => {
                let rows: Vec<Value> =
                    rows.into_iter().map(|(key, row)| json!({ "key": key, "row": row })).collect();
                Response::json(200, &json!({ "read_model": name, "rows": rows, "next": next }))
            }
            other => rows_answer(name, None, other),
        };
        with_freshness(response, header)
    }

    fn one(&self, name: &str, key: &str, query: &str) -> Response {
        if let Err(r) = parse_query(query, &[]) {
            return r;
        }
        let (route, store, header) = match self.read_model(name) {
            Ok(found) => found,
            Err(r) => return r,
        };
        let response = match route(&store, RowsQuery::One(key)) {
            Ok(RowsAnswer::One(Some(row))) => {
                Response::json(200, &json!({ "read_model": name, "key": key, "row": row }))
            }
            Ok(RowsAnswer::One(None)) => {
                Response::error(404, "unknown_key", format!("{name} has no row with the key {key:?}"))
            }
            other => rows_answer(name, Some(key), other),
        };
        with_freshness(response, header)
    }

    fn reconcile(&self, request: &Request) -> Response {
        let loopback = request.peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
        if !loopback {
            return Response::error(403, "forbidden", "POST /reconcile answers clients on this machine only");
        }
        let params = match parse_query(&request.query, &["mode", "read_model"]) {
            Ok(p) => p,
            Err(r) => return r,
        };
        let Some(harness) = &self.harness else {
            return Response::error(
                501,
                "not_configured",
                "this service was started without a reconciliation harness",
            );
        };
        let mode = match params.get("mode").map(|m| m.parse::<ReconcileMode>()) {
            Some(Ok(mode)) => mode,
            Some(Err(e)) => return Response::error(400, "bad_parameter", e.to_string()),
            None => return Response::error(400, "bad_parameter", "mode is required: full or sampled"),
        };
        if let Status::Gone = self.source.status() {
            return engine_error(&EngineError::ShutDown);
        }
        match harness.run_once(mode, params.get("read_model").map(String::as_str), None) {
            Ok(report) => {
                let body = serde_json::to_value(&report).unwrap_or(Value::Null);
                match &report.skipped {
                    Some(skip) => Response::json(
                        409,
                        &json!({ "error": "lease_held", "message": format!("the reconciliation did not run: {skip}"), "report": body }),
                    ),
                    None => Response::json(200, &body),
                }
            }
            Err(HarnessError::UnknownReadModel { name }) => {
                let known = harness.read_models().join(", ");
                let message =
                    format!("no reconciler is registered for the read model {name:?}; it reconciles {known}");
                Response::error(404, "unknown_read_model", message)
            }
            Err(e) => Response::error(500, "reconcile_failed", e.to_string()),
        }
    }
}

/// The JSON of one read model's freshness: its fields and `header`, the value of
/// [`FRESHNESS_HEADER`] (`null` while unknown or catching up).
fn freshness_json(f: &Freshness) -> Value {
    let mut value = serde_json::to_value(f).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("header".to_owned(), f.header_value().map_or(Value::Null, Value::String));
    }
    value
}

fn with_freshness(response: Response, header: Option<String>) -> Response {
    match header {
        Some(value) => response.with_header(FRESHNESS_HEADER, value),
        None => response,
    }
}

/// The answer to a read-model route's switch, refusal or failure.
fn rows_answer(name: &str, key: Option<&str>, answer: Result<RowsAnswer, RowsError>) -> Response {
    match answer {
        Ok(RowsAnswer::SwitchedOff { since }) => switched_off(name, since),
        Ok(_) => Response::error(500, "internal", "the read model answered another question than was asked"),
        Err(RowsError::BadKey { text, expected }) => {
            let message = format!("{text:?} is not a key of {name}: its keys are {expected}");
            Response::error(400, "bad_key", message)
        }
        Err(RowsError::Read(ReadError::UnknownReadModel(_))) => Response::error(
            404,
            "unknown_read_model",
            format!("the read model {name} is not registered with the engine"),
        ),
        Err(RowsError::Read(e)) => {
            tracing::error!(read_model = name, key, error = %e, "reading a read model for HTTP failed");
            Response::error(500, "read_failed", format!("reading {name} failed: {e}"))
        }
        Err(RowsError::Serialize(e)) => Response::error(
            500,
            "serialize_failed",
            format!("a row of {name} could not be written as JSON: {e}"),
        ),
    }
}

fn switched_off(name: &str, since: Timestamp) -> Response {
    Response::json(
        503,
        &json!({
            "error": "switched_off",
            "read_model": name,
            "since_ms": since.0,
            "since": crate::text::utc(since),
            "message": format!(
                "the read model {name} is switched off (its kill switch was engaged at {}); answer from the source of truth instead",
                crate::text::utc(since)
            ),
        }),
    )
}

fn engine_error(e: &EngineError) -> Response {
    match e {
        EngineError::ShutDown => Response::error(503, "shut_down", "the engine is shut down"),
        EngineError::Poisoned(_) => Response::error(503, "poisoned", e.to_string()),
        other => {
            tracing::error!(error = %other, "an HTTP request failed in the engine");
            Response::error(500, "engine_failed", other.to_string())
        }
    }
}

/// The decoded segments of `path` (`/a/b%20c` is `["a", "b c"]`; `/` is `[""]`).
fn decode_path(path: &str) -> Result<Vec<String>, Response> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    trimmed
        .split('/')
        .map(|segment| {
            percent_encoding::percent_decode_str(segment).decode_utf8().map(|s| s.into_owned()).map_err(
                |_| {
                    Response::error(
                        400,
                        "bad_path",
                        "the path is not UTF-8 once its percent escapes are decoded",
                    )
                },
            )
        })
        .collect()
}

/// The parameters of `query`, each at most once and each one of `allowed`.
fn parse_query(query: &str, allowed: &[&str]) -> Result<BTreeMap<String, String>, Response> {
    let mut params = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            let message = if allowed.is_empty() {
                format!("this endpoint takes no parameters, not {name:?}")
            } else {
                format!("{name:?} is not a parameter of this endpoint; it takes {}", allowed.join(", "))
            };
            return Err(Response::error(400, "bad_parameter", message));
        }
        if params.insert(name.clone().into_owned(), value.into_owned()).is_some() {
            return Err(Response::error(400, "bad_parameter", format!("{name:?} is given more than once")));
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_by_segment() -> Result<(), String> {
        let segments = decode_path("/read-models/listing_card/l%2F1%20x").map_err(|_| "refused")?;
        assert_eq!(segments, ["read-models", "listing_card", "l/1 x"]);
        assert_eq!(decode_path("/").map_err(|_| "refused")?, [""]);
        let bad = decode_path("/read-models/%FF").err().ok_or("accepted")?;
        assert_eq!(bad.status, 400);
        Ok(())
    }

    #[test]
    fn queries_take_known_parameters_once() -> Result<(), String> {
        let p = parse_query("from=a%20b&limit=5", &["from", "limit"]).map_err(|_| "refused")?;
        assert_eq!(p.get("from").map(String::as_str), Some("a b"));
        assert_eq!(p.get("limit").map(String::as_str), Some("5"));
        for bad in ["lmit=5", "limit=1&limit=2"] {
            let r = parse_query(bad, &["from", "limit"]).err().ok_or("accepted")?;
            assert_eq!(r.status, 400, "{bad}");
            assert!(String::from_utf8_lossy(r.body()).contains("bad_parameter"));
        }
        assert!(parse_query("", &[]).is_ok());
        Ok(())
    }

    #[test]
    fn a_switched_off_answer_says_so_in_json() -> Result<(), serde_json::Error> {
        let r = switched_off("cards", Timestamp(0));
        assert_eq!(r.status, 503);
        let body: Value = serde_json::from_slice(r.body())?;
        assert_eq!(body.get("error").and_then(Value::as_str), Some("switched_off"));
        assert_eq!(body.get("since").and_then(Value::as_str), Some("1970-01-01 00:00:00 UTC"));
        Ok(())
    }
}
