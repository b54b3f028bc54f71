//! The HTML report as a reader sees it: the quick compare's `report.html` opened in the same headless Chromium
//! the other browser tests use, screenshotted at 1280 px into the run's results directory, and its DOM checked
//! for the headline figure and every run's charts.

use std::path::Path;
use std::time::Duration;

use loadtest::experiment::Environment;
use loadtest::pipeline::PipelineConfig;
use tokio_util::sync::CancellationToken;

use crate::helpers::{chromium, run_chromium, settings};

/// The same lowered time scale and consumers as the compare test (see there for why).
const TEST_TIME_SCALE: f64 = 10.0;
const TEST_CONSUMERS: usize = 5;
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_shows_the_headline_and_every_runs_charts_in_chromium() {
    let browser = chromium();
    let environment =
        Environment::Embedded(PipelineConfig { consumers: TEST_CONSUMERS, ..PipelineConfig::default() });
    let settings = settings(environment, TEST_TIME_SCALE, Duration::from_secs(120), Duration::from_millis(1));
    let document =
        loadtest::commands::compare::compare(&settings, 1024, true, &CancellationToken::new()).await.unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("report-browser-{}", std::process::id()));
    let html = loadtest::render::html::report(&document);
    loadtest::results::write_all(&dir, &document, &html).unwrap();
    let report = dir.join("report.html");
    let url = format!("file://{}", report.display());

    let screenshot = dir.join("report.png");
    run_chromium(
        &url,
        &[format!("--screenshot={}", screenshot.display()), "--window-size=1280,2400".to_owned()],
    )
    .await;
    let png = std::fs::read(&screenshot).expect("Chromium saved the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "a real screenshot: {} bytes", png.len());
    println!("{} screenshot: {}", browser.display(), screenshot.display());

    let dom = run_chromium(&url, &["--dump-dom".to_owned()]).await;
    let headline = dom.split("id=\"headline\"").nth(1).expect("the headline figure is in the DOM");
    let headline = &headline[..headline.find("</figure>").expect("the headline figure closes")];
    assert!(headline.contains("<svg") && headline.contains("Accepted %"), "the headline chart is drawn");
    for scenario in ["normal", "flash-sale-open", "flash-sale-users"] {
        assert!(headline.contains(scenario), "the headline shows {scenario}");
    }
    assert_eq!(document.runs.len(), 6);
    for run in &document.runs {
        let id = loadtest::render::html::run_section_id(&run.name);
        let section = dom.split(&format!("id=\"{id}\"")).nth(1).unwrap_or_else(|| panic!("no section {id}"));
        let section = &section[..section.find("</section>").expect("the section closes")];
        let charts = section.matches("class=\"chart run-chart\"").count();
        assert!(charts >= 2, "{id}: its latency and throughput charts ({charts})");
        assert_eq!(section.matches("<svg").count(), charts, "{id}: every chart is drawn");
        assert!(
            !section.contains("no data") && !section.contains("chart failed"),
            "{id}: every chart has data"
        );
    }
    assert!(dom.contains("lab time"), "the time axes say they are lab time");
}
