//! Every endpoint over a real listening socket.

use super::{fixture, get, post, raw, TestResult};
use driftless::reconcile::metric_names as reconcile_metrics;
use driftless::EventOutcome;
use driftless_http::{serve, ServeError, ServeOptions, FRESHNESS_HEADER};
use driftless_listings::{generate_events, GenConfig};
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn health_freshness_and_the_index_answer_json() -> TestResult {
    let f = fixture(200)?;
    let service = f.serve(ServeOptions::new())?;
    let addr = service.local_addr();
    assert!(addr.ip().is_loopback(), "the default address is loopback: {addr}");

    let health = get(addr, "/health")?;
    assert_eq!(health.status, 200);
    assert_eq!(health.header("content-type"), Some("application/json"));
    assert_eq!(health.json()?.get("status").and_then(Value::as_str), Some("ok"));

    let freshness = get(addr, "/freshness")?;
    assert_eq!(freshness.status, 200);
    let rows = freshness.json()?.get("read_models").and_then(Value::as_array).cloned().ok_or("no rows")?;
    let card = rows
        .iter()
        .find(|r| r.get("read_model").and_then(Value::as_str) == Some("listing_card"))
        .ok_or("no listing_card")?;
    assert_eq!(card.get("caught_up").and_then(Value::as_bool), Some(true));
    assert!(card.get("header").and_then(Value::as_str).is_some(), "{card}");
    assert!(card.get("applied").and_then(Value::as_u64).is_some_and(|n| n > 0), "{card}");
    let freshness_of = f.engine.freshness_of("listing_card")?;
    assert_eq!(card.get("applied").and_then(Value::as_u64), Some(freshness_of.applied));

    let index = get(addr, "/")?;
    assert_eq!(index.status, 200);
    let exposed = index.json()?.get("read_models").cloned().ok_or("no read_models")?;
    assert_eq!(exposed, serde_json::json!(["district_stats", "listing_card"]));

    // Once the engine is gone, health says so (the service holds it weakly).
    service.stop();
    let service = serve(&f.engine, ServeOptions::new().without_metrics())?;
    let addr = service.local_addr();
    let super::Fixture { engine, harness, _dir } = f;
    drop(harness);
    let engine = Arc::try_unwrap(engine).map_err(|_| "the engine is still shared")?;
    engine.shutdown()?;
    let gone = get(addr, "/health")?;
    assert_eq!(gone.status, 503);
    assert_eq!(gone.json()?.get("status").and_then(Value::as_str), Some("shut_down"));
    assert_eq!(get(addr, "/freshness")?.error().as_deref(), Some("shut_down"));
    assert_eq!(get(addr, "/metrics")?.status, 404, "served without metrics");
    Ok(())
}

#[test]
fn rows_come_one_or_a_page_at_a_time_with_the_freshness_header() -> TestResult {
    let f = fixture(300)?;
    let service = f.serve(ServeOptions::new())?;
    let addr = service.local_addr();

    let first = get(addr, "/read-models/listing_card?limit=3")?;
    assert_eq!(first.status, 200, "{}", first.body);
    let header = first.header(FRESHNESS_HEADER).ok_or("no freshness header")?;
    assert!(header.parse::<f64>().is_ok_and(|s| s >= 0.0), "{header}");
    let page = first.json()?;
    let rows = page.get("rows").and_then(Value::as_array).cloned().ok_or("no rows")?;
    assert_eq!(rows.len(), 3);
    let keys: Vec<&str> = rows.iter().filter_map(|r| r.get("key").and_then(Value::as_str)).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted, "rows come in key order");
    let next = page.get("next").and_then(Value::as_str).ok_or("no next key")?;
    assert!(next > *keys.last().ok_or("no key")?);

    // The next page starts at `next`; `from` is decoded like any query parameter.
    let encoded: String = form_urlencode(next);
    let second = get(addr, &format!("/read-models/listing_card?from={encoded}&limit=2"))?;
    let second_rows = second.json()?.get("rows").and_then(Value::as_array).cloned().ok_or("no rows")?;
    assert_eq!(second_rows.first().and_then(|r| r.get("key")).and_then(Value::as_str), Some(next));

    // One row, exactly as the engine reads it.
    let key = keys.first().ok_or("no key")?;
    let one = get(addr, &format!("/read-models/listing_card/{key}"))?;
    assert_eq!(one.status, 200);
    assert!(one.header(FRESHNESS_HEADER).is_some());
    let driftless::ReadAnswer::Ready(cards) = f.engine.read(&driftless_listings::LISTING_CARD)? else {
        return Err("switched off".into());
    };
    let stored = cards.get(&(*key).to_owned())?.ok_or("no stored row")?;
    assert_eq!(one.json()?.get("row"), Some(&serde_json::to_value(&stored)?));

    let missing = get(addr, "/read-models/listing_card/no-such-listing")?;
    assert_eq!((missing.status, missing.error().as_deref()), (404, Some("unknown_key")));
    assert!(missing.header(FRESHNESS_HEADER).is_some(), "every read-model answer has the header");
    let unknown = get(addr, "/read-models/nope")?;
    assert_eq!((unknown.status, unknown.error().as_deref()), (404, Some("unknown_read_model")));
    assert!(unknown.body.contains("listing_card"), "it names what is exposed: {}", unknown.body);

    // The kill switch: 503 and a clear body, with the header; released, rows again.
    f.engine.set_kill_switch("listing_card", true)?;
    for path in [format!("/read-models/listing_card/{key}"), "/read-models/listing_card".to_owned()] {
        let off = get(addr, &path)?;
        assert_eq!((off.status, off.error().as_deref()), (503, Some("switched_off")), "{path}");
        assert!(off.body.contains("source of truth"), "{}", off.body);
        assert!(off.header(FRESHNESS_HEADER).is_some(), "{path}");
    }
    f.engine.set_kill_switch("listing_card", false)?;
    assert_eq!(get(addr, &format!("/read-models/listing_card/{key}"))?.status, 200);
    Ok(())
}

fn form_urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

#[test]
fn bad_paths_parameters_and_methods_are_clear_client_errors() -> TestResult {
    let f = fixture(50)?;
    let service = f.serve(ServeOptions::new())?;
    let addr = service.local_addr();
    let cases: [(&str, u16, &str); 9] = [
        ("/nowhere", 404, "not_found"),
        ("/read-models/listing_card?limit=0", 400, "bad_parameter"),
        ("/read-models/listing_card?limit=1001", 400, "bad_parameter"),
        ("/read-models/listing_card?limit=ten", 400, "bad_parameter"),
        ("/read-models/listing_card?limit=1&limit=2", 400, "bad_parameter"),
        ("/read-models/listing_card?colour=red", 400, "bad_parameter"),
        ("/health?verbose=1", 400, "bad_parameter"),
        ("/read-models/listing_card/a/b", 404, "not_found"),
        ("/read-models/%FF", 400, "bad_path"),
    ];
    for (path, status, code) in cases {
        let a = get(addr, path)?;
        assert_eq!((a.status, a.error().as_deref()), (status, Some(code)), "{path}: {}", a.body);
        let message = a.json()?.get("message").and_then(Value::as_str).map(str::to_owned).unwrap_or_default();
        assert!(!message.is_empty(), "{path}: an error says what was wrong");
    }
    let wrong_method = post(addr, "/health")?;
    assert_eq!((wrong_method.status, wrong_method.header("allow")), (405, Some("GET")));
    let bad_mode = post(addr, "/reconcile?mode=weekly")?;
    assert_eq!(bad_mode.status, 400);

    let (status, _) = raw(addr, b"this is not http\r\n\r\n")?;
    assert_eq!(status, 400);
    let (status, text) = raw(addr, b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")?;
    assert_eq!(status, 413, "{text}");
    let long = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(raw(addr, long.as_bytes())?.0, 431);
    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(raw(addr, format!("GET /health HTTP/1.1\r\n{many}\r\n").as_bytes())?.0, 431);
    let (status, _) = raw(addr, b"GET health HTTP/1.1\r\n\r\n")?;
    assert_eq!(status, 400);
    // The service still answers after all of that.
    assert_eq!(get(addr, "/health")?.status, 200);
    Ok(())
}

#[test]
fn slow_clients_time_out_and_a_full_queue_is_answered_busy() -> TestResult {
    let f = fixture(0)?;
    let service =
        f.serve(ServeOptions::new().workers(1).queue(1).request_timeout(Duration::from_millis(1_500)))?;
    let addr = service.local_addr();

    // A client that sends half a head is answered 408 when its time is up.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr)?;
    slow.write_all(b"GET /health HTTP/1.1\r\n")?;
    // Meanwhile the one worker is held by `slow`: one more connection waits in the queue,
    // and the next is answered 503 at once by the accepting thread.
    std::thread::sleep(Duration::from_millis(200));
    let waiting = TcpStream::connect(addr)?;
    std::thread::sleep(Duration::from_millis(200));
    let (status, text) = raw(addr, b"GET /health HTTP/1.1\r\n\r\n")?;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("Retry-After: 1"), "{text}");
    assert!(started.elapsed() < Duration::from_millis(1_400), "the busy answer came at once");

    slow.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut slow, &mut answer)?;
    assert_eq!(super::status_of(&answer)?, 408, "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(1_400));
    drop((slow, waiting));
    // Once the worker is free again, the service answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(addr, "/health")?.status != 200 {
        assert!(Instant::now() < deadline, "the service stayed busy");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

#[test]
fn health_is_503_once_a_storage_failure_has_stopped_the_writer() -> TestResult {
    let f = fixture(20)?;
    let service = f.serve(ServeOptions::new())?;
    let addr = service.local_addr();
    assert_eq!(get(addr, "/health")?.status, 200);
    f.engine.store().poison("a simulated failed sync");
    let health = get(addr, "/health")?;
    assert_eq!(health.status, 503);
    let body = health.json()?;
    assert_eq!(body.get("status").and_then(Value::as_str), Some("poisoned"));
    assert!(
        body.get("message").and_then(Value::as_str).is_some_and(|m| m.contains("a simulated failed sync")),
        "{body}"
    );
    // Reads still answer: the file is as it was at the last commit.
    assert_eq!(get(addr, "/freshness")?.status, 200);
    Ok(())
}

#[test]
fn the_service_binds_to_loopback_unless_told_otherwise() -> TestResult {
    let f = fixture(0)?;
    let anywhere: SocketAddr = "0.0.0.0:0".parse()?;
    let refused = serve(&f.engine, ServeOptions::new().address(anywhere).without_metrics());
    assert!(matches!(refused, Err(ServeError::NotLoopback { .. })), "{refused:?}");
    let zero = serve(&f.engine, ServeOptions::new().workers(0).without_metrics());
    assert!(matches!(zero, Err(ServeError::InvalidSetting { setting: "workers", .. })), "{zero:?}");
    let v6: SocketAddr = "[::1]:0".parse()?;
    if let Ok(service) = serve(&f.engine, ServeOptions::new().address(v6).without_metrics()) {
        assert_eq!(get(service.local_addr(), "/health")?.status, 200);
    }
    Ok(())
}

#[test]
fn metrics_carry_the_reconciliation_metrics_and_the_state_gauges() -> TestResult {
    let f = fixture(400)?;
    let tampered = f.tamper(5)?;
    let service = f.serve(ServeOptions::new())?;
    let addr = service.local_addr();

    let run = post(addr, "/reconcile?mode=full&read_model=listing_card")?;
    assert_eq!(run.status, 200, "{}", run.body);
    let report = run.json()?;
    let rm = report
        .get("read_models")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .cloned()
        .ok_or("no run")?;
    assert_eq!(rm.get("drifted").and_then(Value::as_u64), Some(tampered.len() as u64));
    // Three clean runs promote district_stats.
    for _ in 0..3 {
        assert_eq!(post(addr, "/reconcile?mode=full&read_model=district_stats")?.status, 200);
    }
    let unknown = post(addr, "/reconcile?mode=full&read_model=nope")?;
    assert_eq!((unknown.status, unknown.error().as_deref()), (404, Some("unknown_read_model")));

    let scrape = get(addr, "/metrics")?;
    assert_eq!(scrape.status, 200);
    assert!(scrape.header("content-type").is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    let text = &scrape.body;
    // The original system's five: samples, drift, breaches and promotions counters, and
    // the run-duration histogram.
    for name in [
        reconcile_metrics::SAMPLES_TOTAL,
        reconcile_metrics::DRIFT_TOTAL,
        reconcile_metrics::BREACHES_TOTAL,
        reconcile_metrics::RUN_DURATION_SECONDS,
    ] {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} is missing");
    }
    assert!(text.contains(&format!("{}_bucket", reconcile_metrics::RUN_DURATION_SECONDS)), "a histogram");
    assert!(text.contains(&format!("# TYPE {} counter", reconcile_metrics::PROMOTIONS_TOTAL)));
    let promoted =
        format!("{}{{read_model=\"district_stats\",to=\"promoted\"}}", reconcile_metrics::PROMOTIONS_TOTAL);
    assert!(metric_value(text, &promoted).is_some_and(|v| v >= 1.0), "{promoted}");
    let drift = format!("{}{{read_model=\"listing_card\",mode=\"full\"}}", reconcile_metrics::DRIFT_TOTAL);
    assert!(metric_value(text, &drift).is_some_and(|v| v >= tampered.len() as f64), "{drift}");
    // The engine's state gauges, recorded at the scrape.
    let m = driftless::metric_names::READ_MODEL_CAUGHT_UP;
    assert!(metric_value(text, &format!("{m}{{read_model=\"listing_card\"}}")).is_some(), "{m}");
    let m = driftless::metric_names::READ_MODEL_BREACH_STREAK;
    assert_eq!(metric_value(text, &format!("{m}{{read_model=\"listing_card\"}}")), Some(1.0));
    assert!(text.contains(driftless_http::metric_names::REQUESTS_TOTAL));
    assert!(text.contains("# HELP driftless_reconcile_samples_total"));
    Ok(())
}

/// The value of the sample line starting with `series`.
fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn scrapes_and_reads_go_on_while_an_ingest_commits() -> TestResult {
    let f = fixture(0)?;
    let service = f.serve(ServeOptions::new().workers(4))?;
    let addr = service.local_addr();
    let events =
        generate_events(GenConfig { events: 6_000, listings: 600, districts: 6, ..GenConfig::default() });
    let done = Arc::new(AtomicBool::new(false));

    let scrapers: Vec<_> = ["/metrics", "/freshness", "/read-models/listing_card?limit=50", "/health"]
        .into_iter()
        .map(|path| {
            let done = Arc::clone(&done);
            std::thread::spawn(move || -> Result<usize, String> {
                let mut answered = 0;
                while !done.load(Ordering::SeqCst) {
                    let a = get(addr, path).map_err(|e| format!("{path}: {e}"))?;
                    match a.status {
                        200 => answered += 1,
                        // Rows before the first commit of listing_card may not exist yet.
                        status => return Err(format!("{path} answered {status}: {}", a.body)),
                    }
                }
                Ok(answered)
            })
        })
        .collect();

    let mut applied = 0u64;
    for chunk in events.chunks(200) {
        for report in f.engine.dispatch_batch(chunk.to_vec())?.wait()? {
            applied += u64::from(report.outcome == EventOutcome::Applied);
        }
    }
    done.store(true, Ordering::SeqCst);
    let mut answered = 0;
    for s in scrapers {
        answered += s.join().map_err(|_| "a scraper panicked")??;
    }
    assert!(answered >= 4, "every scraper was answered at least once: {answered}");

    let freshness = get(addr, "/freshness")?.json()?;
    let rows = freshness.get("read_models").and_then(Value::as_array).cloned().ok_or("no rows")?;
    let card = rows
        .iter()
        .find(|r| r.get("read_model").and_then(Value::as_str) == Some("listing_card"))
        .ok_or("no listing_card")?;
    assert!(applied > 0);
    assert_eq!(card.get("caught_up").and_then(Value::as_bool), Some(true));
    let scrape = get(addr, "/metrics")?.body;
    let applied_total =
        metric_value(&scrape, "driftless_events_total{outcome=\"applied\"}").ok_or("no applied counter")?;
    assert!(applied_total >= applied as f64, "{applied_total} < {applied}");
    Ok(())
}
