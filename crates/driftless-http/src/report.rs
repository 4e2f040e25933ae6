//! The drift report: one self-contained HTML page about every reconciled read model.
//!
//! It shows, per read model, the promotion state and its history, the drift ratio of each
//! recorded reconciliation run against the breach threshold (a chart, and the same figures
//! as a table), freshness, dead letters, the latest drifted keys with their reasons, and
//! the kill switch. The page has no script and loads nothing: its styles are inline and
//! its charts are inline SVG. Everything that comes from data (names, keys, reasons) is
//! escaped by the template (`maud`), which escapes every value it is given.
//!
//! It is built for people: `lang`, landmarks (`header`, `nav`, `main`, `footer`), headings
//! in order, each chart an SVG with `role="img"`, a `<title>`, a `<desc>` and an equivalent
//! data table, states and breaches said in words and patterns (never by colour alone),
//! visible focus, a layout that reflows at 200 % zoom, light and dark colour schemes
//! (`prefers-color-scheme`) and no motion (`prefers-reduced-motion` is respected by having
//! none).

use crate::text::{age, count, iso8601, percent, utc};
use driftless::reconcile::{
    PromotionState, ReconcileHistory, RunRecord, RunVerdict, TransitionCause, DEFAULT_BREACH_PPM, PPM,
};
use driftless::{DeadLetter, Engine, EngineError, Event, ReadModelState, Timestamp};
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Serialize;

/// The most dead letters the report lists per read model (all are counted).
pub const REPORT_DEAD_LETTERS: usize = 10;

/// What a report shows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportOptions {
    /// The page's title and first heading.
    pub title: String,
    /// The breach threshold drawn on the charts, in parts per million of the keys checked
    /// (default 1,000: 0.1 %). Each run is judged as it was recorded.
    pub breach_ppm: u64,
    /// The read models shown, in this order (`None`: every projected read model).
    pub read_models: Option<Vec<String>>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        Self { title: "Drift report".to_owned(), breach_ppm: DEFAULT_BREACH_PPM, read_models: None }
    }
}

impl ReportOptions {
    /// Sets the title.
    #[must_use]
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// Sets the breach threshold drawn on the charts, in parts per million.
    #[must_use]
    pub fn breach_ppm(mut self, ppm: u64) -> Self {
        self.breach_ppm = ppm;
        self
    }

    /// Shows only these read models, in this order.
    #[must_use]
    pub fn read_models(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.read_models = Some(names.into_iter().map(Into::into).collect());
        self
    }
}

/// A dead letter as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DeadLetterLine {
    /// The event id.
    pub event_id: String,
    /// The event's name.
    pub event_name: String,
    /// Why the handler refused it, the last time.
    pub reason: String,
    /// How many times it failed.
    pub attempts: u32,
    /// When it last failed.
    pub last_failed_at: Timestamp,
}

impl From<&DeadLetter> for DeadLetterLine {
    fn from(d: &DeadLetter) -> Self {
        Self {
            event_id: d.event_id.clone(),
            event_name: d.event_name.clone(),
            reason: d.reason.clone(),
            attempts: d.attempts,
            last_failed_at: d.last_failed_at,
        }
    }
}

/// One read model's part of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct ReportSection {
    /// Its freshness, kill switch and promotion health.
    pub state: ReadModelState,
    /// Its recorded runs and promotion changes.
    pub history: ReconcileHistory,
    /// Its handler's dead letters, the first [`REPORT_DEAD_LETTERS`].
    pub dead_letters: Vec<DeadLetterLine>,
}

/// The drift report's figures, and its HTML ([`Self::to_html`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DriftReport {
    /// The title.
    pub title: String,
    /// When it was made, by the engine's clock.
    pub generated_at: Timestamp,
    /// The threshold drawn on the charts, in parts per million.
    pub breach_ppm: u64,
    /// Why the engine stopped writing, if it did.
    pub poisoned: Option<String>,
    /// One section per read model.
    pub sections: Vec<ReportSection>,
}

impl DriftReport {
    /// Gathers the report's figures from `engine`.
    ///
    /// # Errors
    /// [`EngineError`] when the database cannot be read.
    pub fn collect<E: Event>(engine: &Engine<E>, options: &ReportOptions) -> Result<Self, EngineError> {
        let states = engine.read_model_states()?;
        let chosen: Vec<ReadModelState> = match &options.read_models {
            None => states.into_iter().filter(|s| !s.view).collect(),
            Some(names) => names
                .iter()
                .filter_map(|name| states.iter().find(|s| s.freshness.read_model == *name).cloned())
                .collect(),
        };
        let mut sections = Vec::with_capacity(chosen.len());
        for state in chosen {
            let history = engine.reconcile_history(&state.freshness.read_model)?;
            let dead_letters = if state.view {
                Vec::new()
            } else {
                engine
                    .dead_letters(Some(&state.freshness.owner))?
                    .iter()
                    .take(REPORT_DEAD_LETTERS)
                    .map(DeadLetterLine::from)
                    .collect()
            };
            sections.push(ReportSection { state, history, dead_letters });
        }
        Ok(Self {
            title: options.title.clone(),
            generated_at: engine.clock().now(),
            breach_ppm: options.breach_ppm,
            poisoned: engine.store().poisoned().map(|p| p.first_failure),
            sections,
        })
    }

    /// The report as one self-contained HTML page.
    #[must_use]
    pub fn to_html(&self) -> String {
        page(self).into_string()
    }
}

const STYLE: &str = r#"
:root {
  color-scheme: light dark;
  --bg: #ffffff; --fg: #1b1b1b; --muted: #474747; --panel: #f3f4f6; --border: #767676;
  --link: #0a4fb4; --focus: #b3261e; --bar: #2b5c8a; --breach: #a3161b; --grid: #b9b9b9;
  --ok-bg: #e3f1e6; --warn-bg: #fdf0d8; --bad-bg: #fbe3e3;
}
@media (prefers-color-scheme: dark) {
  :root {
    --bg: #131417; --fg: #ececec; --muted: #c7c7c7; --panel: #1f2126; --border: #9a9a9a;
    --link: #9cc5ff; --focus: #ffb4a8; --bar: #8ab8f0; --breach: #ff9d9d; --grid: #5a5a5a;
    --ok-bg: #17311d; --warn-bg: #3a2a0c; --bad-bg: #3d1616;
  }
}
*, *::before, *::after { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 1rem/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
header, nav, main, footer { max-width: 75rem; margin: 0 auto; padding: 0 1rem; }
header { padding-top: 1rem; }
h1 { font-size: 1.75rem; margin: 0.5rem 0; }
h2 { font-size: 1.4rem; margin: 2.5rem 0 0.75rem; padding-top: 1rem; border-top: 2px solid var(--border); }
h3 { font-size: 1.1rem; margin: 1.5rem 0 0.5rem; }
p { margin: 0.5rem 0; }
a { color: var(--link); text-underline-offset: 0.15em; }
a:focus-visible, [tabindex]:focus-visible { outline: 3px solid var(--focus); outline-offset: 2px; }
.skip { position: absolute; left: -100vw; top: 0; }
.skip:focus { position: static; display: inline-block; padding: 0.25rem 0.5rem; }
.muted { color: var(--muted); }
.alert { border: 2px solid var(--breach); background: var(--bad-bg); padding: 0.5rem 0.75rem; }
nav ul { list-style: none; padding: 0; margin: 0.5rem 0; display: flex; flex-wrap: wrap; gap: 0.5rem 1.5rem; }
dl.facts { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 16rem), 1fr));
  gap: 0.5rem 1rem; margin: 0.75rem 0; }
dl.facts > div { background: var(--panel); border: 1px solid var(--border); padding: 0.5rem 0.75rem; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 0.4rem; border: 1px solid var(--border); border-radius: 0.25rem;
  font-weight: 600; }
.state-promoted { background: var(--ok-bg); }
.state-shadow { background: var(--warn-bg); }
.state-demoted, .switch-on { background: var(--bad-bg); }
figure { margin: 0.5rem 0; }
svg.chart { width: 100%; height: auto; max-width: 60rem; display: block; }
svg text { fill: var(--fg); font: 12px system-ui, "DejaVu Sans", sans-serif; }
svg .axis { stroke: var(--fg); stroke-width: 1; }
svg .grid { stroke: var(--grid); stroke-width: 1; }
svg .bar { fill: var(--bar); stroke: var(--bar); }
svg .bar-breach { stroke: var(--breach); stroke-width: 1.5; }
svg .hatch-bg { fill: var(--bg); }
svg .hatch-line { stroke: var(--breach); stroke-width: 2.5; }
svg .bar-open { fill: none; stroke: var(--fg); stroke-width: 1.5; stroke-dasharray: 3 2; }
svg .threshold { stroke: var(--fg); stroke-width: 2; stroke-dasharray: 8 4; }
figcaption { font-size: 0.95rem; }
.legend { list-style: none; padding: 0; margin: 0.25rem 0; display: flex; flex-wrap: wrap; gap: 0.25rem 1.25rem; }
svg.swatch { width: 1.75rem; height: 1rem; vertical-align: middle; margin-right: 0.3rem; }
.table-wrap { overflow-x: auto; margin: 0.5rem 0 1rem; }
table { border-collapse: collapse; min-width: 100%; }
caption { text-align: left; font-weight: 600; padding: 0.25rem 0; caption-side: top; }
th, td { border: 1px solid var(--border); padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: var(--panel); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.key, td.reason { overflow-wrap: anywhere; }
footer { margin-top: 3rem; padding-bottom: 2rem; border-top: 1px solid var(--border); }
@media (prefers-reduced-motion: reduce) {
  *, *::before, *::after { animation: none !important; transition: none !important; scroll-behavior: auto !important; }
}
"#;

fn page(report: &DriftReport) -> Markup {
    let threshold = percent(report.breach_ppm as f64 / PPM as f64);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (report.title) " — driftless" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    a.skip href="#main" { "Skip to the report" }
                    h1 { (report.title) }
                    p {
                        "Made " time datetime=(iso8601(report.generated_at)) { (utc(report.generated_at)) }
                        ". A run breaches when more than " strong { (threshold) } " of the keys it checked drifted."
                    }
                    @if let Some(failure) = &report.poisoned {
                        p.alert {
                            strong { "The engine has stopped writing" } " after a storage failure: " (failure)
                            ". Reopen the database to resume."
                        }
                    }
                }
                @if !report.sections.is_empty() {
                    nav aria-label="Read models" {
                        ul {
                            @for (i, s) in report.sections.iter().enumerate() {
                                li {
                                    a href={ "#rm-" (i) } { (s.state.freshness.read_model) }
                                    " (" (state_word(&s.state)) ")"
                                }
                            }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    @if report.sections.is_empty() {
                        p { "There is no reconciled read model in this database yet." }
                    }
                    @for (i, s) in report.sections.iter().enumerate() {
                        (section(i, s, report.breach_ppm))
                    }
                }
                footer {
                    p.muted {
                        "Made by driftless. Each section keeps the last "
                        (driftless::reconcile::HISTORY_RUNS)
                        " reconciliation runs and promotion changes of its read model."
                    }
                }
            }
        }
    }
}

fn state_word(state: &ReadModelState) -> &'static str {
    match state.health.as_ref().map(|h| h.state) {
        Some(PromotionState::Promoted) => "promoted",
        Some(PromotionState::Demoted) => "demoted",
        Some(PromotionState::Shadow) => "shadow",
        None => "a view, not reconciled",
    }
}

fn state_badge(state: PromotionState) -> Markup {
    let (class, symbol, word, meaning) = match state {
        PromotionState::Promoted => ("state-promoted", "✔", "Promoted", "trusted after clean runs in a row"),
        PromotionState::Shadow => ("state-shadow", "◐", "Shadow", "checked, not yet trusted"),
        PromotionState::Demoted => ("state-demoted", "✖", "Demoted", "drifted while trusted; rebuild it"),
    };
    html! {
        span class={ "badge " (class) } { span aria-hidden="true" { (symbol) " " } (word) }
        " — " (meaning)
    }
}

fn section(i: usize, s: &ReportSection, breach_ppm: u64) -> Markup {
    let f = &s.state.freshness;
    let heading = format!("rm-{i}-h");
    html! {
        section id={ "rm-" (i) } aria-labelledby=(heading) {
            h2 id=(heading) { (f.read_model) }
            dl.facts {
                div {
                    dt { "Promotion state" }
                    dd {
                        @match &s.state.health {
                            Some(h) => {
                                (state_badge(h.state))
                                br;
                                (h.consecutive_clean) " clean and " (h.consecutive_breaches) " breaching runs in a row"
                            }
                            None => { "Not reconciled (a materialized view)" }
                        }
                    }
                }
                div {
                    dt { "Kill switch" }
                    dd {
                        @match &s.state.kill_switch {
                            Some(k) => {
                                span.badge.switch-on { "Engaged" }
                                " since " time datetime=(iso8601(k.engaged_at)) { (utc(k.engaged_at)) }
                                ": readers are sent to the source of truth"
                            }
                            None => { "Released: the read model answers reads" }
                        }
                    }
                }
                div {
                    dt { "Freshness" }
                    dd {
                        @match f.seconds {
                            Some(seconds) => { "Newest event applied " (age(seconds)) " ago" }
                            None => { "No event applied yet" }
                        }
                        @if let Some(lag) = f.commit_lag_ms { "; commit lag " (count(lag)) " ms" }
                        br;
                        @if f.caught_up { "Caught up with the journal" } @else { "Catching up with the journal" }
                        @if let Some(header) = f.header_value() {
                            " (X-Data-Freshness-Seconds: " (header) ")"
                        }
                    }
                }
                div {
                    dt { "Dead letters" }
                    dd {
                        (count(f.dead_letters)) " waiting for " (f.owner)
                        br;
                        (count(f.applied)) " events applied"
                    }
                }
            }
            (runs_part(i, s, breach_ppm))
            (promotion_part(i, s))
            (drifted_keys_part(i, s))
            (dead_letters_part(i, s))
        }
    }
}

fn run_word(r: &RunRecord) -> &'static str {
    match r.verdict {
        RunVerdict::Clean => "clean",
        RunVerdict::Breach => "breach",
        RunVerdict::Inconclusive => "inconclusive",
    }
}

fn runs_part(i: usize, s: &ReportSection, breach_ppm: u64) -> Markup {
    let runs = &s.history.runs;
    let name = &s.state.freshness.read_model;
    let caption = format!("rm-{i}-runs");
    html! {
        h3 { "Drift per reconciliation run" }
        @if runs.is_empty() {
            p { "No reconciliation run is recorded yet." }
        } @else {
            figure {
                (chart(i, name, runs, breach_ppm))
                figcaption {
                    ul.legend aria-label="How to read the chart" {
                        li { (swatch("bar", None)) "Solid bar: a run within the threshold" }
                        li { (swatch("bar-breach", Some(i))) "Hatched bar: a run that breached it" }
                        li { (swatch("bar-open", None)) "Dashed outline: inconclusive (keys could not be checked)" }
                        li { (threshold_swatch()) "Dashed line: the threshold, " (percent(breach_ppm as f64 / PPM as f64)) }
                    }
                }
            }
            div.table-wrap role="region" aria-labelledby=(caption) tabindex="0" {
                table {
                    caption id=(caption) { "Runs of " (name) ", oldest first (the chart's figures)" }
                    thead {
                        tr {
                            th scope="col" { "Run" }
                            th scope="col" { "When (UTC)" }
                            th scope="col" { "Mode" }
                            th scope="col" { "Checked" }
                            th scope="col" { "Drifted" }
                            th scope="col" { "Errors" }
                            th scope="col" { "Drift" }
                            th scope="col" { "Verdict" }
                            th scope="col" { "State after" }
                        }
                    }
                    tbody {
                        @for (n, r) in runs.iter().enumerate() {
                            tr {
                                th scope="row" { (n + 1) }
                                td { time datetime=(iso8601(r.at)) { (utc(r.at)) } }
                                td { (r.mode.as_str()) }
                                td.num { (count(r.sampled)) }
                                td.num { (count(r.drifted)) }
                                td.num { (count(r.errors)) }
                                td.num { (percent(r.drift_ratio())) }
                                td { (run_word(r)) @if r.paged { ", paged" } }
                                td {
                                    (r.state.as_str())
                                    @if let Some(t) = r.transition { " (was " (t.from.as_str()) ")" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A small picture of a bar style for the legend (hidden from assistive technology: the
/// text beside it says the same).
fn swatch(class: &str, hatch: Option<usize>) -> Markup {
    html! {
        svg.swatch viewBox="0 0 28 16" aria-hidden="true" focusable="false" {
            @match hatch {
                Some(i) => { rect class=(class) x="1" y="1" width="26" height="14" fill={ "url(#hatch-" (i) ")" } {} }
                None => { rect class=(class) x="1" y="1" width="26" height="14" {} }
            }
        }
    }
}

fn threshold_swatch() -> Markup {
    html! {
        svg.swatch viewBox="0 0 28 16" aria-hidden="true" focusable="false" {
            line.threshold x1="0" y1="8" x2="28" y2="8" {}
        }
    }
}

/// Chart geometry, in SVG user units.
const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

fn fmt1(v: f64) -> String {
    format!("{v:.1}")
}

/// The bar chart of `runs`' drift ratios against the threshold.
fn chart(i: usize, name: &str, runs: &[RunRecord], breach_ppm: u64) -> Markup {
    let threshold = breach_ppm as f64 / PPM as f64;
    let highest = runs.iter().map(RunRecord::drift_ratio).fold(0.0_f64, f64::max);
    // The scale shows the threshold well above the floor, and every bar.
    let top = (highest * 1.15).max(threshold * 2.0).max(1e-6);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let y_of = |ratio: f64| TOP + plot_h - (ratio / top).clamp(0.0, 1.0) * plot_h;
    let step = plot_w / runs.len().max(1) as f64;
    let gap = (step * 0.15).min(6.0);
    let label_every = runs.len().div_ceil(12).max(1);
    let title_id = format!("rm-{i}-chart-title");
    let desc_id = format!("rm-{i}-chart-desc");
    let breaches = runs.iter().filter(|r| r.breach).count();
    let latest = runs.last().map(RunRecord::drift_ratio).unwrap_or_default();
    let highest_run = runs
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.drift_ratio().total_cmp(&b.1.drift_ratio()))
        .map_or(0, |(n, _)| n + 1);
    let desc = format!(
        "{} runs, oldest on the left. The highest drift was {} (run {}); {} of the runs breached the \
         threshold of {}; the latest run found {}. The table below lists every run's figures.",
        runs.len(),
        percent(highest),
        highest_run,
        breaches,
        percent(threshold),
        percent(latest),
    );
    let threshold_y = y_of(threshold);
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img"
            aria-labelledby=(title_id) aria-describedby=(desc_id) xmlns="http://www.w3.org/2000/svg" {
            title id=(title_id) { "Drift ratio of each reconciliation run of " (name) " against the " (percent(threshold)) " threshold" }
            desc id=(desc_id) { (desc) }
            defs {
                pattern id={ "hatch-" (i) } patternUnits="userSpaceOnUse" width="6" height="6" patternTransform="rotate(45)" {
                    rect.hatch-bg x="0" y="0" width="6" height="6" {}
                    line.hatch-line x1="0" y1="0" x2="0" y2="6" {}
                }
            }
            @for tick in [0.0, top / 2.0, top] {
                line.grid x1=(fmt1(LEFT)) x2=(fmt1(WIDTH - RIGHT)) y1=(fmt1(y_of(tick))) y2=(fmt1(y_of(tick))) {}
                text x=(fmt1(LEFT - 6.0)) y=(fmt1(y_of(tick) + 4.0)) text-anchor="end" { (percent(tick)) }
            }
            @for (n, r) in runs.iter().enumerate() {
                @let x = LEFT + n as f64 * step + gap;
                @let w = (step - 2.0 * gap).max(1.0);
                @let y = y_of(r.drift_ratio()).min(TOP + plot_h - 1.0);
                @let h = TOP + plot_h - y;
                @if r.verdict == RunVerdict::Inconclusive {
                    rect.bar-open x=(fmt1(x)) y=(fmt1(y)) width=(fmt1(w)) height=(fmt1(h)) {}
                } @else if r.breach {
                    rect.bar-breach x=(fmt1(x)) y=(fmt1(y)) width=(fmt1(w)) height=(fmt1(h)) fill={ "url(#hatch-" (i) ")" } {}
                } @else {
                    rect.bar x=(fmt1(x)) y=(fmt1(y)) width=(fmt1(w)) height=(fmt1(h)) {}
                }
                @if n % label_every == 0 || n + 1 == runs.len() {
                    text x=(fmt1(x + w / 2.0)) y=(fmt1(HEIGHT - BOTTOM + 16.0)) text-anchor="middle" { (n + 1) }
                }
            }
            line.axis x1=(fmt1(LEFT)) x2=(fmt1(LEFT)) y1=(fmt1(TOP)) y2=(fmt1(TOP + plot_h)) {}
            line.axis x1=(fmt1(LEFT)) x2=(fmt1(WIDTH - RIGHT)) y1=(fmt1(TOP + plot_h)) y2=(fmt1(TOP + plot_h)) {}
            line.threshold x1=(fmt1(LEFT)) x2=(fmt1(WIDTH - RIGHT)) y1=(fmt1(threshold_y)) y2=(fmt1(threshold_y)) {}
            text x=(fmt1(WIDTH - RIGHT)) y=(fmt1(threshold_y - 6.0)) text-anchor="end" { "threshold " (percent(threshold)) }
            text x=(fmt1(LEFT + plot_w / 2.0)) y=(fmt1(HEIGHT - 4.0)) text-anchor="middle" { "run (oldest first)" }
        }
    }
}

fn cause_words(cause: TransitionCause) -> String {
    match cause {
        TransitionCause::Run(mode) => format!("a {mode} reconciliation run"),
        TransitionCause::Rebuild => "a rebuild from the journal".to_owned(),
        _ => "another cause".to_owned(),
    }
}

fn promotion_part(i: usize, s: &ReportSection) -> Markup {
    let transitions = &s.history.transitions;
    let caption = format!("rm-{i}-promotions");
    html! {
        h3 { "Promotion history" }
        @if transitions.is_empty() {
            p { "No promotion change is recorded: it has been in shadow since it was first reconciled." }
        } @else {
            div.table-wrap role="region" aria-labelledby=(caption) tabindex="0" {
                table {
                    caption id=(caption) { "Promotion changes of " (s.state.freshness.read_model) ", oldest first" }
                    thead { tr { th scope="col" { "When (UTC)" } th scope="col" { "From" } th scope="col" { "To" } th scope="col" { "Caused by" } } }
                    tbody {
                        @for t in transitions {
                            tr {
                                td { time datetime=(iso8601(t.at)) { (utc(t.at)) } }
                                td { (t.from.as_str()) }
                                td { (t.to.as_str()) }
                                td { (cause_words(t.cause)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn drifted_keys_part(i: usize, s: &ReportSection) -> Markup {
    let caption = format!("rm-{i}-drifted");
    let latest = s.history.latest();
    html! {
        h3 { "Latest drifted keys" }
        @match s.history.latest_drift() {
            None => { p { "No recorded run found a drifted key." } }
            Some(run) => {
                @if latest.is_some_and(|l| l.at != run.at) {
                    p { "The latest run found no drift. These keys are from the last run that did." }
                }
                div.table-wrap role="region" aria-labelledby=(caption) tabindex="0" {
                    table {
                        caption id=(caption) {
                            "Drifted keys of " (s.state.freshness.read_model) " in the " (run.mode.as_str()) " run of " (utc(run.at)) ": "
                            (run.drifted_keys.len()) " of " (count(run.drifted)) " shown"
                        }
                        thead { tr { th scope="col" { "Key" } th scope="col" { "Why it drifted" } } }
                        tbody {
                            @for d in &run.drifted_keys {
                                tr { td.key { code { (d.key) } } td.reason { (d.reason) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn dead_letters_part(i: usize, s: &ReportSection) -> Markup {
    let caption = format!("rm-{i}-dead");
    let total = s.state.freshness.dead_letters;
    html! {
        h3 { "Dead letters" }
        @if s.dead_letters.is_empty() {
            p { "No dead letter is waiting." }
        } @else {
            div.table-wrap role="region" aria-labelledby=(caption) tabindex="0" {
                table {
                    caption id=(caption) {
                        "Dead letters of " (s.state.freshness.owner) ", the handler of " (s.state.freshness.read_model) ": "
                        (s.dead_letters.len()) " of " (count(total)) " shown"
                    }
                    thead { tr { th scope="col" { "Event id" } th scope="col" { "Event" } th scope="col" { "Reason" } th scope="col" { "Attempts" } th scope="col" { "Last failed (UTC)" } } }
                    tbody {
                        @for d in &s.dead_letters {
                            tr {
                                td.key { code { (d.event_id) } }
                                td { (d.event_name) }
                                td.reason { (d.reason) }
                                td.num { (d.attempts) }
                                td { time datetime=(iso8601(d.last_failed_at)) { (utc(d.last_failed_at)) } }
                            }
                        }
                    }
                }
            }
        }
    }
}
