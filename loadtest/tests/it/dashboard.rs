//! The live dashboard: in a real browser (Debian's headless Chromium, `$CHROMIUM`), following an embedded
//! pipeline under load; and its DLQ routes, which are `up`'s control API.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bus::{ATTR_DEAD_LETTER_REASON, Consumer, DeadLetter, OutgoingMessage};
use loadtest::dashboard::{DEFAULT_INTERVAL, Dashboard, DashboardConfig, Follow, Source};
use loadtest::pipeline::{EmbeddedPipeline, PipelineConfig};
use orders::PaymentConfig;
use tokio_util::sync::CancellationToken;

use crate::helpers::run_chromium;

const ORDER: &str =
    r#"{"customer_id": 42, "items": [{"product_id": "PROD-001", "quantity": 1, "price": 9.99}]}"#;

/// The text inside the element with `id` in a DOM dump (tags inside it dropped), or `None` if absent.
fn text_of(dom: &str, id: &str) -> Option<String> {
    let start = dom.find(&format!("id=\"{id}\""))?;
    let inner = &dom[start + dom[start..].find('>')? + 1..];
    let mut text = String::new();
    let mut depth = 0usize;
    let mut in_tag = false;
    for (at, c) in inner.char_indices() {
        match c {
            '<' if inner[at..].starts_with("</") => {
                if depth == 0 {
                    break;
                }
                depth -= 1;
                in_tag = true;
            }
            '<' => {
                depth += 1;
                in_tag = true;
            }
            '>' => in_tag = false,
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    Some(text.trim().to_owned())
}

/// A number the page printed (`1,234`, `12.5`); `None` for `—`.
fn number_of(dom: &str, id: &str) -> Option<f64> {
    text_of(dom, id)?.replace(',', "").parse().ok()
}

/// The dashboard's latest snapshot, as the page gets it.
async fn snapshot(http: &reqwest::Client, dashboard: &Dashboard) -> serde_json::Value {
    let url = format!("{}api/snapshot", dashboard.url());
    http.get(url).send().await.expect("the dashboard answers").json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_the_pipeline_in_chromium_and_looks_an_order_up() {
    // One consumer at 50 ms a payment settles 20 orders/s; about 100/s arrive, so a backlog builds.
    let config = PipelineConfig {
        payment: PaymentConfig { latency: Duration::from_millis(50), ..PaymentConfig::default() },
        ..PipelineConfig::default()
    };
    let pipeline = EmbeddedPipeline::start(&config).await.expect("pipeline");
    let dashboard = Dashboard::start(
        Source::Embedded(Follow::Receiver(pipeline.receiver)),
        DashboardConfig { port: 0, interval: DEFAULT_INTERVAL },
    )
    .expect("dashboard on a free port");
    let http = reqwest::Client::new();
    let url = dashboard.url();
    println!("dashboard: {url}");

    // Before any order: the page as it first paints.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while snapshot(&http, &dashboard).await["live"] != true {
        assert!(tokio::time::Instant::now() < deadline, "the dashboard never saw the pipeline");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = run_chromium(&url, &["--dump-dom".into()]).await;
    assert_eq!(text_of(&before, "total-accepted").as_deref(), Some("0"), "no order yet");
    assert_eq!(number_of(&before, "backlog-visible"), Some(0.0));

    // Orders arrive at about 100/s for the rest of the test.
    let stop = CancellationToken::new();
    let posted = Arc::new(AtomicU64::new(0));
    let last_order = Arc::new(std::sync::Mutex::new(String::new()));
    let poster = tokio::spawn({
        let (http, stop, posted, last_order) =
            (http.clone(), stop.clone(), posted.clone(), last_order.clone());
        let url = format!("http://{}/orders/async", pipeline.receiver);
        async move {
            while !stop.is_cancelled() {
                let answer: serde_json::Value = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(ORDER)
                    .send()
                    .await
                    .expect("the receiver answers")
                    .json()
                    .await
                    .expect("JSON");
                *last_order.lock().unwrap() = answer["order_id"].as_str().expect("an order id").to_owned();
                posted.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    // Until the dashboard's own sample counts the first hundred (it samples every 100 ms).
    while posted.load(Ordering::Relaxed) < 100
        || snapshot(&http, &dashboard).await["totals"]["accepted"].as_u64().unwrap_or(0) < 100
    {
        assert!(tokio::time::Instant::now() < deadline + Duration::from_secs(30), "orders did not flow");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let order_id = last_order.lock().unwrap().clone();
    let worker_id = pipeline.worker().config().worker_id.clone();

    // The page under load, with the order looked up (`?order=<id>`: the page arrives with the lookup's answer,
    // so the DOM Chromium dumps has it whatever the machine's speed; `#order=` fetches it after the load).
    let lookup_url = format!("{url}?order={order_id}");
    let after = run_chromium(&lookup_url, &["--dump-dom".into()]).await;
    let accepted_total = number_of(&after, "total-accepted").expect("a total");
    assert!(accepted_total >= 100.0, "the page counts the accepted orders: {accepted_total}");
    let backlog =
        number_of(&after, "backlog-visible").unwrap() + number_of(&after, "backlog-in-flight").unwrap();
    assert!(backlog > 0.0, "100 orders/s against 20/s builds a backlog the page shows");
    let accepted_rate = number_of(&after, "rate-accepted").expect("an accepted rate");
    assert!(accepted_rate > 0.0, "orders are arriving: {accepted_rate}/s");
    assert_ne!(text_of(&after, "latency-p50").as_deref(), Some("—"), "settled orders have a latency");
    assert!(
        after.contains(&format!("data-worker-id=\"{worker_id}\"")),
        "the worker's row appears: {}",
        text_of(&after, "workers").unwrap_or_default()
    );
    assert!(after.contains(&format!("data-order-id=\"{order_id}\"")), "the looked-up order is shown");
    let status = text_of(&after, "order-status").expect("the order's status");
    assert!(["pending", "processing", "completed", "declined"].contains(&status.as_str()), "{status}");

    // The event stream the page follows: a snapshot at once, then newer ones, ten a second.
    let mut events = http.get(format!("{url}events")).send().await.expect("the event stream");
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let mut received = String::new();
    // Complete events only: the last piece may be cut off mid-line.
    let complete = |received: &str| received.split("\n\n").count().saturating_sub(1);
    while complete(&received) < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.chunk())
            .await
            .expect("events keep coming")
            .expect("the stream stays open")
            .expect("more events");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    let events_received: Vec<&str> = received.split("\n\n").collect();
    let times: Vec<i64> = events_received[..events_received.len() - 1]
        .iter()
        .flat_map(|event| event.lines())
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str::<serde_json::Value>(data).unwrap()["at_ms"].as_i64().unwrap())
        .collect();
    assert!(times.len() >= 3 && times.windows(2).all(|pair| pair[0] < pair[1]), "newer each time: {times:?}");
    drop(events);

    // A screenshot among the results, at a laptop's width.
    let results = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&results).unwrap();
    let png = results.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(
        &lookup_url,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,1300".into(),
            "--timeout=3000".into(),
        ],
    )
    .await;
    let bytes = std::fs::read(&png).expect("chromium saved the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "a real PNG");
    println!("screenshot: {}", png.display());

    stop.cancel();
    poster.await.unwrap();
    dashboard.shutdown().await;
    pipeline.shutdown().await;
}

#[tokio::test]
async fn the_dlq_panel_lists_and_redrives_through_the_control_routes() {
    let pipeline = EmbeddedPipeline::start(&PipelineConfig::default()).await.expect("pipeline");
    let dashboard = Dashboard::start(
        Source::Embedded(Follow::Receiver(pipeline.receiver)),
        DashboardConfig { port: 0, interval: DEFAULT_INTERVAL },
    )
    .expect("dashboard");
    let message = OutgoingMessage::new("not an order".to_owned())
        .with_attribute(ATTR_DEAD_LETTER_REASON, "poison: not an order message");
    pipeline.stack.queue.send_to_dead_letter(message).await.expect("dead-letter");
    let http = reqwest::Client::new();

    let letters: Vec<DeadLetter> =
        http.get(format!("{}api/dlq", dashboard.url())).send().await.unwrap().json().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason.as_deref(), Some("poison: not an order message"));

    let response = http.post(format!("{}api/dlq/redrive", dashboard.url())).send().await.unwrap();
    assert!(response.status().is_success(), "{}", response.text().await.unwrap_or_default());
    let report: serde_json::Value = response.json().await.unwrap();
    // The worker dead-letters the poison again as soon as it is back, and the redrive follows it a few times.
    assert!(report["moved"].as_u64().unwrap() >= 1, "{report}");

    // The page itself is self-contained: nothing is fetched from another origin.
    let page = http.get(dashboard.url()).send().await.unwrap().text().await.unwrap();
    assert!(
        page.contains("id=\"panel-dlq\"") && page.contains("\"snapshot\":"),
        "the page, its data inlined"
    );
    assert!(!page.contains("https://") && !page.contains("src=\"http"), "no CDN, nothing from the internet");

    dashboard.shutdown().await;
    pipeline.shutdown().await;
}
