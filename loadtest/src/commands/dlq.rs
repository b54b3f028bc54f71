//! `dlq list` and `dlq redrive`: the dead-letter queue of SQS (through `bus::aws::AwsDeadLetters`) or of the
//! embedded pipeline inside a running `loadtest up`, which serves them on its loopback control API
//! ([`control_router`]: `GET /dlq?max=N`, `POST /dlq/redrive?fallback=true`).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bus::{DeadLetter, DeadLetters, RedriveOptions, RedriveReport};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::cli::{DlqAction, DlqArgs, DlqTarget};

/// `up`'s control port unless `--control-port` says otherwise: next to the receiver (8080) and worker (8081).
pub const DEFAULT_CONTROL_PORT: u16 = 8082;

/// The control URL `dlq` talks to by default: `up`'s default control port on loopback.
pub fn default_control_url() -> String {
    format!("http://127.0.0.1:{DEFAULT_CONTROL_PORT}")
}

/// Runs `dlq list` or `dlq redrive`.
pub async fn dlq(args: DlqArgs) -> anyhow::Result<()> {
    match args.action {
        DlqAction::List(list) => {
            let letters = match aws_dead_letters(&list.target).await {
                Some(tools) => tools.list(list.max).await.context("peeking at the DLQ")?,
                None => {
                    let url = format!("{}/dlq?max={}", list.target.control_url, list.max);
                    control_call(reqwest::Client::new().get(&url), &url).await?
                }
            };
            if list.json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", table(&letters));
            }
            Ok(())
        }
        DlqAction::Redrive(redrive) => {
            let options = RedriveOptions {
                force_fallback: redrive.fallback,
                in_flight_wait: redrive.in_flight_wait,
                ..RedriveOptions::default()
            };
            let report = match aws_dead_letters(&redrive.target).await {
                Some(tools) => tools
                    .redrive(&options, &|event| println!("  {event}"))
                    .await
                    .context("redriving the DLQ")?,
                None => {
                    let url =
                        format!("{}/dlq/redrive?fallback={}", redrive.target.control_url, redrive.fallback);
                    control_call(reqwest::Client::new().post(&url), &url).await?
                }
            };
            println!("{}", summary(&report));
            Ok(())
        }
    }
}

/// The SQS tools when `--queue-url` names a queue, with the standard AWS configuration (the same as the
/// probes of a deployed stack use: `bus::aws::config_from_env`, which honours `AWS_ENDPOINT_URL`).
async fn aws_dead_letters(target: &DlqTarget) -> Option<bus::aws::AwsDeadLetters> {
    let (Some(queue_url), Some(dlq_url)) = (&target.queue_url, &target.dlq_url) else { return None };
    let sdk = bus::aws::config_from_env().await;
    Some(bus::aws::AwsDeadLetters::new(&sdk, queue_url.clone(), dlq_url.clone()))
}

/// One call to `up`'s control API, its JSON answer decoded.
async fn control_call<T: serde::de::DeserializeOwned>(
    request: reqwest::RequestBuilder,
    url: &str,
) -> anyhow::Result<T> {
    let response = request.send().await.with_context(|| {
        format!(
            "no control API at {url}: is `loadtest up` running (see its --control-port), or give --queue-url"
        )
    })?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url} answered {status}: {}", response.text().await.unwrap_or_default());
    }
    response.json().await.with_context(|| format!("reading the answer of {url}"))
}

/// The listing as a table: reason, receive count, age, order id (when the body is an order message),
/// message id.
pub fn table(letters: &[DeadLetter]) -> String {
    let mut out = String::new();
    if letters.is_empty() {
        out.push_str("the dead-letter queue is empty\n");
        return out;
    }
    let rows: Vec<[String; 5]> = letters
        .iter()
        .map(|letter| {
            let age = humantime::format_duration(Duration::from_secs(letter.age_seconds)).to_string();
            [
                letter.reason.clone().unwrap_or_else(|| "(moved by SQS redrive)".into()),
                letter.receive_count.to_string(),
                age,
                order_id(&letter.body).unwrap_or_else(|| "-".into()),
                letter.message_id.clone(),
            ]
        })
        .collect();
    let header = ["reason", "receives", "age", "order id", "message id"];
    let mut widths = header.map(|title| title.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let line: Vec<String> =
            row.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    let _ = writeln!(out, "{} message(s); they stay in the DLQ (a peek is one more receive)", letters.len());
    out
}

/// The order id of an order message (raw or in an SNS envelope), if the body is one.
fn order_id(body: &str) -> Option<String> {
    orders::WireMessage::parse(body).ok().map(|message| message.order.order_id.to_string())
}

/// The redrive's one-line result.
pub fn summary(report: &RedriveReport) -> String {
    let mut line = format!(
        "moved {} message(s) back to the orders queue by {} in {:.1} s",
        report.moved, report.method, report.duration_seconds
    );
    if report.delete_failures > 0 {
        let _ = write!(line, "; {} delete(s) failed (those are copied again later)", report.delete_failures);
    }
    if report.left_behind > 0 {
        let _ = write!(line, "; {} left in the DLQ (in flight): run it again", report.left_behind);
    }
    line
}

/// The control API of `up`: the embedded pipeline's dead-letter queue.
pub fn control_router(dead_letters: Arc<dyn DeadLetters>) -> Router {
    Router::new().route("/dlq", get(list)).route("/dlq/redrive", post(redrive)).with_state(dead_letters)
}

/// Serves [`control_router`] on `listener` until `stop` is cancelled.
pub async fn serve_control(
    listener: TcpListener,
    dead_letters: Arc<dyn DeadLetters>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, control_router(dead_letters)).with_graceful_shutdown(stop.cancelled_owned()).await
}

/// `GET /dlq` parameters.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// The most messages to show.
    max: Option<usize>,
}

/// The most messages `GET /dlq` shows without `?max=`.
const DEFAULT_LIST_MAX: usize = 50;

async fn list(
    State(dead_letters): State<Arc<dyn DeadLetters>>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Vec<DeadLetter>>, (StatusCode, String)> {
    dead_letters.list(query.max.unwrap_or(DEFAULT_LIST_MAX)).await.map(Json).map_err(internal)
}

/// `POST /dlq/redrive` parameters.
#[derive(Debug, Deserialize)]
struct RedriveQuery {
    /// Accepted for symmetry with SQS; the embedded redrive always copies.
    #[serde(default)]
    fallback: bool,
}

async fn redrive(
    State(dead_letters): State<Arc<dyn DeadLetters>>,
    Query(query): Query<RedriveQuery>,
) -> Result<Json<RedriveReport>, (StatusCode, String)> {
    let options = RedriveOptions { force_fallback: query.fallback, ..RedriveOptions::default() };
    let report = dead_letters
        .redrive(&options, &|event| tracing::info!(%event, "embedded DLQ redrive"))
        .await
        .map_err(internal)?;
    Ok(Json(report))
}

fn internal(error: bus::BusError) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_reason_count_age_and_order_id() {
        let request = orders::OrderRequest::from_json(
            br#"{"customer_id": 1, "items": [{"product_id": "PROD-001", "quantity": 1, "price": 9.99}]}"#,
        )
        .unwrap();
        let order = orders::Order::new(request);
        let id = order.order_id.to_string();
        let letter = |body: String, reason: Option<&str>| DeadLetter {
            message_id: "m-1".into(),
            body,
            reason: reason.map(str::to_owned),
            receive_count: 3,
            sent_at: chrono::Utc::now(),
            age_seconds: 90,
            attributes: Default::default(),
        };
        let text = table(&[
            letter(orders::WireMessage::new(order, chrono::Utc::now()).to_json(), Some("payment declined")),
            letter("not json".into(), None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("reason"), "{text}");
        assert!(lines[1].contains("payment declined") && lines[1].contains(&id), "{text}");
        assert!(lines[1].contains("1m 30s") && lines[1].contains(" 3 "), "{text}");
        assert!(lines[2].contains("(moved by SQS redrive)") && lines[2].contains(" - "), "{text}");
        assert_eq!(table(&[]), "the dead-letter queue is empty\n");
    }
}
