//! Idempotency keys on the client side: each order carries a fresh `Idempotency-Key`, and an attempt that
//! leaves the order's fate open (a 503, a 409, no answer in time, a broken connection) is retried with the
//! same key and the same body, as a careful client does. A server that honours keys creates each order once
//! however many attempts it saw; the counters here let a run check that from the outside.
//!
//! A keyed request is one request in the results: its outcome is its last attempt's, and its latency runs
//! from its start (or intended start) to its last answer, retries and pauses included. Retries, replayed
//! answers and keys that were answered with more than one order id are counted apart
//! ([`IdempotencyCounts`]).

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::client::{Connection, RequestSpec};
use crate::outcome::{FailureKind, Outcome};

/// The response header with which a server marks an answer replayed from an earlier attempt with the key.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Attempts per keyed request, the first included: four retries ride out a shed burst of a few seconds, and
/// the bound keeps a dead server from holding a connection for ever.
pub const MAX_ATTEMPTS: u32 = 5;

/// The backoff ceiling of the first retry, doubled for each further one: short enough that a blip costs
/// little, long enough that a shedding server is not asked again at once.
pub const BASE_BACKOFF: Duration = Duration::from_millis(100);

/// The highest backoff ceiling, so that a policy with more attempts still retries within seconds (the
/// default's fourth and last retry has a ceiling of 800 ms).
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The longest `Retry-After` honoured: a server asking for minutes would stall the load, and the request
/// would long have timed out for its user anyway.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(5);

/// How keyed requests are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per keyed request, the first included (at least 1).
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry; doubles with each retry up to `max_backoff`.
    pub base_backoff: Duration,
    /// Highest backoff ceiling.
    pub max_backoff: Duration,
    /// Longest `Retry-After` honoured; longer ones are cut to it.
    pub retry_after_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: MAX_ATTEMPTS,
            base_backoff: BASE_BACKOFF,
            max_backoff: MAX_BACKOFF,
            retry_after_cap: RETRY_AFTER_CAP,
        }
    }
}

impl RetryPolicy {
    /// The policy on a clock running `k` times faster (a time-compressed run): its durations ÷ `k`, like every
    /// other time of such a run. A server's `Retry-After` is whole seconds, so on a fast clock the (scaled) cap
    /// is what a client waits.
    pub fn time_scaled(self, k: f64) -> RetryPolicy {
        RetryPolicy {
            base_backoff: self.base_backoff.div_f64(k),
            max_backoff: self.max_backoff.div_f64(k),
            retry_after_cap: self.retry_after_cap.div_f64(k),
            ..self
        }
    }

    /// The pause before retry number `retry` (1 for the first). With a `Retry-After`, at least that (up to the
    /// cap); without, between half and all of the retry's backoff ceiling. Either way a random share of the
    /// ceiling is added, so that clients shed together do not all come back together.
    pub fn pause(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let doublings = retry.saturating_sub(1).min(20);
        let ceiling = self.base_backoff.saturating_mul(1 << doublings).min(self.max_backoff);
        let jitter = (ceiling / 2).mul_f64(fastrand::f64());
        match retry_after {
            Some(after) => after.min(self.retry_after_cap) + jitter,
            None => ceiling / 2 + jitter,
        }
    }
}

/// What one keyed request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keyed {
    /// The last attempt's outcome.
    pub outcome: Outcome,
    /// Attempts sent after the first.
    pub retries: u32,
    /// Answers marked `Idempotent-Replayed: true`.
    pub replays: u32,
    /// Whether the answers named more than one order id: the server created the order more than once.
    pub duplicate: bool,
}

/// Keyed requests' counters, per interval and per run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyCounts {
    /// Keyed requests sent and finished (each counted once, however many attempts it took; a request the open
    /// model could not send in time never gets a key).
    pub keyed_requests: u64,
    /// Attempts sent after the first, over all keyed requests.
    pub retries: u64,
    /// Answers marked `Idempotent-Replayed: true`.
    pub replays: u64,
    /// Keys whose answers named more than one distinct order id: orders created twice. Must be 0.
    pub duplicate_orders: u64,
}

impl IdempotencyCounts {
    /// Counts one finished keyed request.
    pub fn add(&mut self, keyed: &Keyed) {
        self.keyed_requests += 1;
        self.retries += u64::from(keyed.retries);
        self.replays += u64::from(keyed.replays);
        self.duplicate_orders += u64::from(keyed.duplicate);
    }

    /// Adds another set of counts into this one.
    pub fn merge(&mut self, other: &IdempotencyCounts) {
        self.keyed_requests += other.keyed_requests;
        self.retries += other.retries;
        self.replays += other.replays;
        self.duplicate_orders += other.duplicate_orders;
    }
}

/// A fresh key: a random UUID (v4) as a Structured Field string, in quotes, as the draft writes it.
pub fn new_key() -> HeaderValue {
    let key = format!("\"{}\"", uuid::Uuid::new_v4());
    HeaderValue::try_from(key).expect("a quoted UUID is a valid header value")
}

/// Sends request `seq` of `spec` with a fresh key, and retries it with the same key and body while its
/// answer leaves the order's fate open, as `policy` says; `timeout` applies to each attempt.
pub async fn send(
    connection: &mut Connection,
    spec: &RequestSpec,
    seq: u64,
    timeout: Duration,
    policy: &RetryPolicy,
) -> Keyed {
    let key = new_key();
    let mut keyed =
        Keyed { outcome: Outcome::Failed(FailureKind::Transport), retries: 0, replays: 0, duplicate: false };
    let mut order_id: Option<String> = None;
    for attempt in 1..=policy.max_attempts.max(1) {
        if attempt > 1 {
            keyed.retries += 1;
        }
        let retry_after = match connection.fetch_response(spec.build_keyed(seq, &key), timeout).await {
            Ok(answer) => {
                keyed.outcome = Outcome::from_status(answer.status());
                keyed.replays += u32::from(replayed(answer.headers()));
                if let Some(named) = named_order_id(answer.body()) {
                    match &order_id {
                        None => order_id = Some(named),
                        Some(first) => keyed.duplicate |= *first != named,
                    }
                }
                if !retryable(answer.status()) {
                    return keyed;
                }
                retry_after_of(&answer)
            }
            // No answer in time, or the connection broke: the order may or may not exist.
            Err(kind) => {
                keyed.outcome = Outcome::Failed(kind);
                None
            }
        };
        if attempt < policy.max_attempts {
            tokio::time::sleep(policy.pause(attempt, retry_after)).await;
        }
    }
    keyed
}

/// 503: shed, or the order's fate unknown (the server keeps no answer, so the key is free again); 409: an
/// earlier attempt with the key is still being processed. Every other answer is final.
fn retryable(status: StatusCode) -> bool {
    matches!(status, StatusCode::SERVICE_UNAVAILABLE | StatusCode::CONFLICT)
}

/// Whether the answer is a replay (`true`, or the Structured Field boolean `?1`).
fn replayed(headers: &HeaderMap) -> bool {
    headers.get(IDEMPOTENT_REPLAYED).and_then(|value| value.to_str().ok()).is_some_and(|value| {
        let value = value.trim();
        value.eq_ignore_ascii_case("true") || value == "?1"
    })
}

/// `Retry-After` as delay-seconds or an HTTP date (a date in the past means now).
fn retry_after_of(answer: &Response<Bytes>) -> Option<Duration> {
    let value = answer.headers().get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((date.with_timezone(&Utc) - Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// The order id an answer names: `order_id` at the top (a 2xx), or inside `error` (an error that names the
/// order a retry will resume, such as a 503 `outcome_unknown`).
fn named_order_id(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        order_id: Option<String>,
        error: Option<NamedError>,
    }
    #[derive(Deserialize)]
    struct NamedError {
        order_id: Option<String>,
    }
    let named: Named = serde_json::from_slice(body).ok()?;
    named.order_id.or_else(|| named.error.and_then(|error| error.order_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fresh_quoted_uuids() {
        let (a, b) = (new_key(), new_key());
        assert_ne!(a, b);
        let text = a.to_str().unwrap();
        assert!(text.starts_with('"') && text.ends_with('"'), "{text}");
        let uuid = uuid::Uuid::parse_str(&text[1..text.len() - 1]).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
    }

    #[test]
    fn pauses_honour_a_capped_retry_after_and_back_off_otherwise() {
        let policy = RetryPolicy::default();
        for _ in 0..200 {
            let after = policy.pause(1, Some(Duration::from_secs(1)));
            assert!((Duration::from_secs(1)..=Duration::from_millis(1050)).contains(&after), "{after:?}");
            let capped = policy.pause(1, Some(Duration::from_secs(3600)));
            assert!((RETRY_AFTER_CAP..=RETRY_AFTER_CAP + Duration::from_millis(50)).contains(&capped));
            let first = policy.pause(1, None);
            assert!((Duration::from_millis(50)..=BASE_BACKOFF).contains(&first), "{first:?}");
            let late = policy.pause(30, None);
            assert!((MAX_BACKOFF / 2..=MAX_BACKOFF).contains(&late), "{late:?}");
        }
        let scaled = policy.time_scaled(100.0);
        assert_eq!((scaled.retry_after_cap, scaled.max_attempts), (Duration::from_millis(50), MAX_ATTEMPTS));
    }

    #[test]
    fn answers_are_read_for_retry_after_replays_and_order_ids() {
        let answer = |header: Option<(&str, &str)>| {
            let mut builder = Response::builder();
            if let Some((name, value)) = header {
                builder = builder.header(name, value);
            }
            builder.body(Bytes::new()).unwrap()
        };
        assert_eq!(retry_after_of(&answer(Some(("retry-after", "3")))), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after_of(&answer(Some(("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")))),
            Some(Duration::ZERO),
            "a date in the past"
        );
        let soon = (Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let until = retry_after_of(&answer(Some(("retry-after", &soon)))).unwrap();
        assert!((Duration::from_secs(28)..=Duration::from_secs(30)).contains(&until), "{until:?}");
        assert_eq!(retry_after_of(&answer(Some(("retry-after", "soon")))), None);
        assert_eq!(retry_after_of(&answer(None)), None);

        assert!(replayed(answer(Some(("idempotent-replayed", "true"))).headers()));
        assert!(replayed(answer(Some(("idempotent-replayed", "?1"))).headers()));
        assert!(!replayed(answer(Some(("idempotent-replayed", "false"))).headers()));
        assert!(!replayed(answer(None).headers()));

        assert_eq!(named_order_id(br#"{"order_id":"a","status":"accepted"}"#).as_deref(), Some("a"));
        let unknown = br#"{"error":{"code":"outcome_unknown","message":"m","order_id":"b"}}"#;
        assert_eq!(named_order_id(unknown).as_deref(), Some("b"));
        assert_eq!(named_order_id(br#"{"error":{"code":"overloaded","message":"m"}}"#), None);
        assert_eq!(named_order_id(b"not json"), None);
    }

    #[test]
    fn counts_add_up() {
        let mut counts = IdempotencyCounts::default();
        let keyed =
            |retries, replays, duplicate| Keyed { outcome: Outcome::Accepted, retries, replays, duplicate };
        counts.add(&keyed(2, 1, false));
        counts.add(&keyed(0, 0, true));
        let mut merged = counts;
        merged.merge(&counts);
        assert_eq!(
            counts,
            IdempotencyCounts { keyed_requests: 2, retries: 2, replays: 1, duplicate_orders: 1 }
        );
        assert_eq!(merged.duplicate_orders, 2);
    }
}
