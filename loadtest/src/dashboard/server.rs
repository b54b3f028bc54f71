//! The dashboard's HTTP routes: the page (with the latest snapshot and the chart history inlined, so it paints
//! at once), the Server-Sent Events stream of snapshots, the order lookup, and the DLQ's list and redrive
//! through the same control routes `loadtest up` serves to `loadtest dlq`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bus::{BusError, DeadLetter, DeadLetters, RedriveOptions, RedriveReport};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use ledger::Ledger;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::commands::dlq;
use crate::dashboard::live::{self, Follow};
use crate::dashboard::sampler::Point;

/// The page: HTML, CSS and script in one file, nothing fetched from elsewhere.
const PAGE: &str = include_str!("page.html");

/// Where the page's inlined start-up data goes.
const INITIAL_MARK: &str = "/*INITIAL*/";

/// What the routes share with the sampler.
pub(crate) struct Shared {
    /// The latest snapshot's JSON (`null` before the first tick).
    pub(crate) latest: watch::Receiver<Arc<str>>,
    /// The chart history, oldest first.
    pub(crate) history: Arc<Mutex<VecDeque<Point>>>,
    /// Event streams open now: without any, the sampler slows down.
    pub(crate) clients: Arc<AtomicUsize>,
    /// Where order lookups go.
    pub(crate) lookup: Lookup,
    /// Ends every event stream, so the server's graceful shutdown is not held open by them.
    pub(crate) stop: CancellationToken,
}

/// Where `GET /api/orders/{id}` looks.
pub(crate) enum Lookup {
    /// The ledger of the embedded pipeline being watched.
    Embedded(Follow),
    /// A deployed ledger (DynamoDB), read directly.
    Ledger(Arc<dyn Ledger>),
    /// A deployed receiver's `GET /orders/{id}`, forwarded.
    Forward {
        /// The receiver's base URL.
        base: String,
        /// The client, with its connection pool.
        http: reqwest::Client,
    },
    /// Nothing to look in.
    Unavailable,
}

/// The dashboard's routes.
pub(crate) fn router(shared: Arc<Shared>, dead_letters: Arc<dyn DeadLetters>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/events", get(events))
        .route("/api/snapshot", get(snapshot))
        .route("/api/history", get(history))
        .route("/api/orders/{id}", get(order))
        .with_state(shared)
        .nest("/api", dlq::control_router(dead_letters))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The page's query: `?order=<id>` sends the page with that order looked up already.
#[derive(serde::Deserialize)]
struct PageQuery {
    order: Option<String>,
}

async fn page(State(shared): State<Arc<Shared>>, Query(query): Query<PageQuery>) -> Response {
    let snapshot = shared.latest.borrow().clone();
    let history = serde_json::to_string(&*lock(&shared.history)).unwrap_or_else(|_| "[]".into());
    let order = match &query.order {
        Some(id) => {
            let (status, body) = lookup(&shared, id).await;
            format!(r#"{{"status":{},"body":{body}}}"#, status.as_u16())
        }
        None => "null".to_owned(),
    };
    // Inside a <script> element, `</` could end it early.
    let initial =
        format!(r#"{{"snapshot":{snapshot},"history":{history},"order":{order}}}"#).replace("</", r"<\/");
    let html = PAGE.replacen(INITIAL_MARK, &initial, 1);
    ([(header::CACHE_CONTROL, "no-store"), (header::CONTENT_TYPE, "text/html; charset=utf-8")], html)
        .into_response()
}

async fn snapshot(State(shared): State<Arc<Shared>>) -> Response {
    json_text(StatusCode::OK, shared.latest.borrow().to_string())
}

async fn history(State(shared): State<Arc<Shared>>) -> Response {
    let history = serde_json::to_string(&*lock(&shared.history)).unwrap_or_else(|_| "[]".into());
    json_text(StatusCode::OK, history)
}

fn json_text(status: StatusCode, body: String) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store"), (header::CONTENT_TYPE, "application/json")], body)
        .into_response()
}

fn error(status: StatusCode, code: &str, message: &str) -> (StatusCode, String) {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    (status, body.to_string())
}

/// Counts an open event stream for as long as it lives.
struct Client(Arc<AtomicUsize>);

impl Client {
    fn new(clients: &Arc<AtomicUsize>) -> Client {
        clients.fetch_add(1, Ordering::Relaxed);
        Client(Arc::clone(clients))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `GET /events`: the latest snapshot at once, then each new one (a slow page skips to the newest: the
/// channel keeps only that), until the dashboard stops.
async fn events(State(shared): State<Arc<Shared>>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut latest = shared.latest.clone();
    latest.mark_changed();
    let state = (latest, shared.stop.clone(), Client::new(&shared.clients));
    let stream = futures_util::stream::unfold(state, |(mut latest, stop, client)| async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return None,
                changed = latest.changed() => changed.ok()?,
            }
            let data = latest.borrow_and_update().clone();
            if &*data != "null" {
                let event = Event::default().event("snapshot").data(&*data);
                return Some((Ok(event), (latest, stop, client)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /api/orders/{id}`: the order's record and ETA, the shape of the receiver's `GET /orders/{id}`.
async fn order(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let (status, body) = lookup(&shared, &id).await;
    json_text(status, body)
}

/// Looks an order up where the dashboard looks: its status and JSON body.
async fn lookup(shared: &Shared, id: &str) -> (StatusCode, String) {
    let Ok(order_id) = Uuid::try_parse(id.trim()) else {
        return error(StatusCode::BAD_REQUEST, "invalid_order_id", "an order id is a UUID");
    };
    match &shared.lookup {
        Lookup::Embedded(follow) => match live::current(*follow) {
            Some(pipeline) => from_ledger(&*pipeline.ledger, order_id, pipeline.ledger.now()).await,
            None => error(StatusCode::SERVICE_UNAVAILABLE, "no_pipeline", "no embedded pipeline is running"),
        },
        Lookup::Ledger(ledger) => from_ledger(&**ledger, order_id, Utc::now()).await,
        Lookup::Forward { base, http } => {
            let url = format!("{}/orders/{order_id}", base.trim_end_matches('/'));
            let answer = async {
                let response = http.get(&url).send().await?;
                let status = response.status();
                Ok::<_, reqwest::Error>((status, response.text().await?))
            };
            match answer.await {
                Ok((status, body)) => {
                    (StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY), body)
                }
                Err(failure) => error(StatusCode::BAD_GATEWAY, "receiver_unreachable", &failure.to_string()),
            }
        }
        Lookup::Unavailable => error(
            StatusCode::NOT_IMPLEMENTED,
            "no_lookup",
            "start the dashboard with --target (the receiver) or --table (the ledger) to look orders up",
        ),
    }
}

async fn from_ledger(ledger: &dyn Ledger, order_id: Uuid, now: DateTime<Utc>) -> (StatusCode, String) {
    match ledger.get(order_id).await {
        Ok(Some(record)) => {
            let fleet = match ledger.registry() {
                Some(registry) => registry.fleet(now).await.unwrap_or_default(),
                None => Vec::new(),
            };
            let eta = ledger::eta::estimate(&record, &fleet, now);
            let mut body = serde_json::to_value(&record).unwrap_or_default();
            body["eta"] = serde_json::json!(eta);
            (StatusCode::OK, body.to_string())
        }
        Ok(None) => error(StatusCode::NOT_FOUND, "order_not_found", &format!("no order {order_id}")),
        Err(failure) => error(StatusCode::SERVICE_UNAVAILABLE, "ledger_unavailable", &failure.to_string()),
    }
}

/// The dead-letter queue of whatever is watched: the embedded pipeline's of the moment, or SQS's.
pub(crate) struct WatchedDeadLetters {
    /// The embedded pipeline followed, if any.
    pub(crate) embedded: Option<Follow>,
    /// SQS's queue and DLQ (`--queue-url`, `--dlq-url`).
    pub(crate) aws: Option<bus::aws::AwsDeadLetters>,
}

impl WatchedDeadLetters {
    fn unavailable(message: &str) -> BusError {
        BusError::Fatal { code: "NoDeadLetterQueue".into(), message: message.into() }
    }
}

#[async_trait]
impl DeadLetters for WatchedDeadLetters {
    async fn list(&self, max: usize) -> Result<Vec<DeadLetter>, BusError> {
        match (&self.embedded, &self.aws) {
            (Some(follow), _) => match live::current(*follow) {
                Some(pipeline) => pipeline.stack.list(max).await,
                None => Err(Self::unavailable("no embedded pipeline is running")),
            },
            (None, Some(aws)) => aws.list(max).await,
            (None, None) => Err(Self::unavailable("give --queue-url and --dlq-url to see the DLQ")),
        }
    }

    async fn redrive(
        &self,
        options: &RedriveOptions,
        progress: bus::dead_letters::Progress<'_>,
    ) -> Result<RedriveReport, BusError> {
        match (&self.embedded, &self.aws) {
            (Some(follow), _) => match live::current(*follow) {
                Some(pipeline) => pipeline.stack.redrive(options, progress).await,
                None => Err(Self::unavailable("no embedded pipeline is running")),
            },
            (None, Some(aws)) => aws.redrive(options, progress).await,
            (None, None) => Err(Self::unavailable("give --queue-url and --dlq-url to redrive the DLQ")),
        }
    }
}
