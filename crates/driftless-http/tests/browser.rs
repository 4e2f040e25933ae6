//! The drift report: its structure as served, and the page in headless Chromium checked by
//! axe-core, at 200 % zoom, by keyboard and in the dark colour scheme, with screenshots.
//!
//! The browser part needs Chromium (`DRIFTLESS_CHROMIUM`, else `chromium` on the `PATH`)
//! and axe-core (`DRIFTLESS_AXE_JS`, else `target/browser-test/node_modules/axe-core/axe.min.js`,
//! where `.ci/run` installs it). Without them it is skipped with a message saying what is
//! missing, unless `DRIFTLESS_BROWSER_TEST=required` (as `.ci/run` sets it), which makes a
//! missing browser a failure.

use super::{fixture, get, post, Fixture, TestResult};
use base64::Engine as _;
use driftless_http::ServeOptions;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A read model with a history worth showing: promoted after three clean runs, then
/// demoted by two breaching ones (its kill switch engaged), with a drifted key whose text
/// is markup, and dead letters.
fn reported() -> TestResult<(Fixture, driftless_http::Service)> {
    let f = fixture(400)?;
    for line in [
        r#"{"aggregate_id":"l-none","event":"ListingPublished","occurred_at":5,"payload":{}}"#,
        r#"{"aggregate_id":"l-gone","event":"InquiryReceived","occurred_at":6,"payload":{"inquiry_id":"q-1"}}"#,
    ] {
        f.engine.dispatch(driftless_listings::parse_line(line)?)?.wait()?;
    }
    let service = f.serve(ServeOptions::new())?;
    let addr = service.local_addr();
    for _ in 0..3 {
        assert_eq!(post(addr, "/reconcile?mode=full")?.status, 200);
    }
    f.tamper(3)?;
    let card = f.tamper(1)?;
    let key = card.first().ok_or("no card")?;
    let driftless::ReadAnswer::Ready(cards) = f.engine.read(&driftless_listings::LISTING_CARD)? else {
        return Err("switched off".into());
    };
    let row = cards.get(key)?.ok_or("no row")?;
    let markup_key = r#"<script>alert("x")</script>"#;
    f.engine.chaos_tamper_row(
        "listing_card",
        markup_key.as_bytes(),
        Some(&driftless::codec::encode(&row)?),
    )?;
    for _ in 0..2 {
        assert_eq!(post(addr, "/reconcile?mode=full")?.status, 200);
    }
    Ok((f, service))
}

#[test]
fn the_report_is_one_self_contained_accessible_page() -> TestResult {
    let (f, service) = reported()?;
    let report = get(service.local_addr(), "/report")?;
    assert_eq!(report.status, 200);
    assert_eq!(report.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(report.header("content-security-policy").is_some_and(|p| p.starts_with("default-src 'none'")));
    let page = &report.body;
    for needle in [
        "<!DOCTYPE html>",
        r#"<html lang="en">"#,
        "<header>",
        r#"<nav aria-label="Read models">"#,
        r#"<main id="main""#,
        "<footer>",
        r##"href="#main""##,
        "prefers-reduced-motion",
        "prefers-color-scheme",
        ":focus-visible",
        // The markup in a drifted key is text, never markup.
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;",
        "Demoted",
        "Engaged",
    ] {
        assert!(page.contains(needle), "the report lacks {needle:?}");
    }
    assert!(!page.contains("<script"), "the report runs no script");
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"), "the report loads nothing");
    assert_eq!(page.matches("<h1").count(), 1);
    // Every chart is an image with a title, a description and a table of its figures.
    let charts = page.matches(r#"role="img""#).count();
    assert_eq!(charts, 2, "one chart per reconciled read model");
    assert_eq!(page.matches("<title id=").count(), charts);
    assert_eq!(page.matches("<desc id=").count(), charts);
    assert!(page.matches("<table").count() >= charts);
    // Headings go down one level at a time.
    let levels: Vec<u8> = page
        .match_indices("<h")
        .filter_map(|(i, _)| page.as_bytes().get(i + 2).copied())
        .filter(u8::is_ascii_digit)
        .map(|b| b - b'0')
        .collect();
    assert!(levels.windows(2).all(|w| matches!(w, [a, b] if *b <= *a + 1)), "{levels:?}");

    // The same page offline, from the engine.
    let offline = driftless_http::DriftReport::collect(&f.engine, &driftless_http::ReportOptions::default())?;
    let names: Vec<&str> = offline.sections.iter().map(|s| s.state.freshness.read_model.as_str()).collect();
    assert_eq!(
        names,
        ["district_stats", "district_stats_listings", "listing_card"],
        "every projected read model"
    );
    let cards =
        offline.sections.iter().find(|s| s.state.freshness.read_model == "listing_card").ok_or("no cards")?;
    assert_eq!(cards.history.runs.len(), 5);
    assert!(cards.dead_letters.len() >= 2, "{:?}", cards.dead_letters);
    Ok(())
}

/// Where the browser test finds its tools, or why it cannot run.
fn tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("DRIFTLESS_CHROMIUM").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|dir| Path::new(dir).join("chromium"))
            .find(|p| p.is_file())
    });
    let axe = std::env::var_os("DRIFTLESS_AXE_JS").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/browser-test/node_modules/axe-core/axe.min.js")
    });
    let chromium =
        chromium.ok_or("no Chromium: install Debian's chromium package or set DRIFTLESS_CHROMIUM")?;
    if !axe.is_file() {
        return Err(format!(
            "no axe-core at {}: run `npm install --prefix target/browser-test axe-core@4` or set DRIFTLESS_AXE_JS",
            axe.display()
        ));
    }
    Ok((chromium, axe))
}

/// A headless Chromium with a DevTools connection to one page.
struct Browser {
    child: Child,
    socket: tungstenite::WebSocket<TcpStream>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.socket.close(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start(chromium: &Path) -> TestResult<Self> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                return Err("Chromium did not say where DevTools listens".into());
            }
        };
        let authority =
            url.strip_prefix("ws://").and_then(|rest| rest.split('/').next()).ok_or("a strange URL")?;
        let stream = TcpStream::connect(authority)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        let (socket, _) = tungstenite::client(url.as_str(), stream).map_err(|e| e.to_string())?;
        let mut browser = Self { child, socket, session: String::new(), next_id: 0, _profile: profile };
        let target = browser.call(None, "Target.createTarget", json!({ "url": "about:blank" }))?;
        let target_id = target.get("targetId").cloned().ok_or("no target")?;
        let attached =
            browser.call(None, "Target.attachToTarget", json!({ "targetId": target_id, "flatten": true }))?;
        browser.session = attached.get("sessionId").and_then(Value::as_str).ok_or("no session")?.to_owned();
        Ok(browser)
    }

    /// Sends a DevTools command (to the page, unless `session` is `None`) and waits for
    /// its result, noting events on the way.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> TestResult<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let message = match session {
            Some(s) => json!({ "id": id, "method": method, "params": params, "sessionId": s }),
            None => json!({ "id": id, "method": method, "params": params }),
        };
        self.socket.send(tungstenite::Message::text(message.to_string())).map_err(|e| e.to_string())?;
        loop {
            let answer = self.read()?;
            if answer.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(error) = answer.get("error") {
                    return Err(format!("{method} failed: {error}").into());
                }
                return Ok(answer.get("result").cloned().unwrap_or(Value::Null));
            }
        }
    }

    fn read(&mut self) -> TestResult<Value> {
        loop {
            match self.socket.read().map_err(|e| e.to_string())? {
                tungstenite::Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
                tungstenite::Message::Close(_) => return Err("DevTools closed the connection".into()),
                _ => {}
            }
        }
    }

    fn page(&mut self, method: &str, params: Value) -> TestResult<Value> {
        let session = self.session.clone();
        self.call(Some(&session), method, params)
    }

    /// Loads `url` and waits for its load event.
    fn open(&mut self, url: &str) -> TestResult {
        self.page("Page.navigate", json!({ "url": url }))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let event = self.read()?;
            if event.get("method").and_then(Value::as_str) == Some("Page.loadEventFired") {
                return Ok(());
            }
        }
        Err("the page did not load".into())
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> TestResult<Value> {
        let result = self.page(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        )?;
        if let Some(e) = result.get("exceptionDetails") {
            return Err(format!("the page threw: {e}").into());
        }
        Ok(result.get("result").and_then(|r| r.get("value")).cloned().unwrap_or(Value::Null))
    }

    /// The viewport: `width` CSS pixels at `scale` device pixels each.
    fn viewport(&mut self, width: u32, scale: f64) -> TestResult {
        let params = json!({ "width": width, "height": 900, "deviceScaleFactor": scale, "mobile": false });
        self.page("Emulation.setDeviceMetricsOverride", params)?;
        Ok(())
    }

    /// axe-core's violations on the page, as `id: help (targets)` lines.
    fn axe_violations(&mut self) -> TestResult<Vec<String>> {
        let found = self.eval(
            "axe.run(document, { resultTypes: ['violations'] }).then(r => r.violations.map(v => \
             v.id + ': ' + v.help + ' (' + v.nodes.map(n => n.target.join(' ')).join(', ') + ')'))",
        )?;
        Ok(serde_json::from_value(found)?)
    }

    fn screenshot(&mut self, path: &Path) -> TestResult {
        let shot =
            self.page("Page.captureScreenshot", json!({ "format": "png", "captureBeyondViewport": true }))?;
        let data = shot.get("data").and_then(Value::as_str).ok_or("no screenshot")?;
        std::fs::write(path, base64::engine::general_purpose::STANDARD.decode(data)?)?;
        Ok(())
    }
}

#[test]
fn the_report_passes_axe_in_a_real_browser_by_keyboard_at_200_percent_and_in_the_dark() -> TestResult {
    let (chromium, axe) = match tools() {
        Ok(found) => found,
        Err(why) if std::env::var("DRIFTLESS_BROWSER_TEST").as_deref() == Ok("required") => {
            return Err(format!("the browser test is required but cannot run: {why}").into());
        }
        Err(why) => {
            eprintln!("SKIPPED the browser test of the drift report: {why}");
            return Ok(());
        }
    };
    let (_f, service) = reported()?;
    let url = format!("http://{}/report", service.local_addr());
    let axe_source = std::fs::read_to_string(&axe)?;
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/browser-test");
    std::fs::create_dir_all(&shots)?;

    let mut browser = Browser::start(&chromium)?;
    browser.page("Page.enable", json!({}))?;
    // The report's policy allows no script: axe-core is let in for the test only.
    browser.page("Page.setBypassCSP", json!({ "enabled": true }))?;
    browser.viewport(1280, 1.0)?;
    browser.open(&url)?;
    assert_eq!(browser.eval("document.documentElement.lang")?, json!("en"));
    browser.eval(&format!("{axe_source}\n;true"))?;
    let violations = browser.axe_violations()?;
    assert!(violations.is_empty(), "axe-core found violations:\n{}", violations.join("\n"));
    browser.screenshot(&shots.join("report.png"))?;

    // Keyboard only: the first Tab reaches the skip link, visibly focused, and Enter on it
    // moves focus to the main content.
    let key = |kind: &str, key: &str, code: u32| json!({ "type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code, "nativeVirtualKeyCode": code });
    browser.page("Input.dispatchKeyEvent", key("rawKeyDown", "Tab", 9))?;
    browser.page("Input.dispatchKeyEvent", key("keyUp", "Tab", 9))?;
    let focused = browser.eval(
        "(() => { const e = document.activeElement; const s = getComputedStyle(e); \
         return [e.textContent, s.outlineStyle, s.outlineWidth, e.getBoundingClientRect().width > 0]; })()",
    )?;
    assert_eq!(focused.get(0), Some(&json!("Skip to the report")), "{focused}");
    assert_ne!(focused.get(1), Some(&json!("none")), "the focus is visible: {focused}");
    assert_eq!(focused.get(3), Some(&json!(true)), "the focused skip link is shown: {focused}");
    browser.page("Input.dispatchKeyEvent", json!({ "type": "keyDown", "key": "Enter", "code": "Enter", "text": "\r", "windowsVirtualKeyCode": 13 }))?;
    browser.page(
        "Input.dispatchKeyEvent",
        json!({ "type": "keyUp", "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13 }),
    )?;
    let focus_in_main = browser.eval("document.activeElement.id")?;
    assert_eq!(focus_in_main, json!("main"), "Enter on the skip link moves focus to the content");
    let scrollers = browser.eval("document.querySelectorAll('[role=region][tabindex=\"0\"]').length")?;
    assert!(scrollers.as_u64().is_some_and(|n| n >= 2), "tables that may scroll take focus: {scrollers}");

    // 200 % zoom: half the CSS pixels, twice the device pixels; nothing needs scrolling
    // sideways but the tables' own regions.
    browser.viewport(640, 2.0)?;
    let fits =
        browser.eval("document.documentElement.scrollWidth <= document.documentElement.clientWidth")?;
    assert_eq!(fits, json!(true), "the page reflows at 200 % zoom");
    assert!(browser.axe_violations()?.is_empty());
    browser.screenshot(&shots.join("report-200.png"))?;

    // The dark scheme, with reduced motion.
    browser.viewport(1280, 1.0)?;
    let media = json!({ "features": [
        { "name": "prefers-color-scheme", "value": "dark" },
        { "name": "prefers-reduced-motion", "value": "reduce" },
    ] });
    browser.page("Emulation.setEmulatedMedia", media)?;
    let background = browser.eval("getComputedStyle(document.body).backgroundColor")?;
    assert_eq!(background, json!("rgb(19, 20, 23)"), "the dark scheme is applied");
    let violations = browser.axe_violations()?;
    assert!(violations.is_empty(), "axe-core found violations in the dark:\n{}", violations.join("\n"));
    browser.screenshot(&shots.join("report-dark.png"))?;
    eprintln!("screenshots of the drift report: {}", shots.display());
    Ok(())
}
