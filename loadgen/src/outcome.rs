//! What happened to one request: accepted, or failed for one of a few reasons people act on differently.

use hyper::StatusCode;
use serde::{Deserialize, Serialize};

/// The result of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer: the order was accepted (async 202) or completed (sync 200).
    Accepted,
    /// Anything else.
    Failed(FailureKind),
}

impl Outcome {
    /// Classifies an HTTP status.
    pub fn from_status(status: StatusCode) -> Outcome {
        match status.as_u16() {
            200..=299 => Outcome::Accepted,
            402 => Outcome::Failed(FailureKind::Declined),
            503 => Outcome::Failed(FailureKind::Shed),
            504 => Outcome::Failed(FailureKind::Timeout),
            500..=599 => Outcome::Failed(FailureKind::ServerError),
            _ => Outcome::Failed(FailureKind::ClientError),
        }
    }
}

/// Why a request failed. The classes are the ones that call for different fixes: a timeout is capacity, a
/// shed is back-pressure working, a decline is business as usual, a 4xx is a bug in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// No answer within the request timeout, or the server answered 504 (it gave up waiting itself).
    Timeout,
    /// 503: the server shed the request under overload (fast failure with `Retry-After`).
    Shed,
    /// 402: the simulated payment was declined (a business outcome, counted as a failure as the lab did).
    Declined,
    /// Any other 5xx.
    ServerError,
    /// 4xx other than 402, or any other unexpected status: the request itself was wrong.
    ClientError,
    /// Connection refused, reset or closed mid-exchange.
    Transport,
    /// The generator could not send it within the request timeout of its intended time (every connection
    /// was busy): raise `--max-connections`. Only the open model has intended times.
    NotSent,
}

impl FailureKind {
    /// Every kind, in report order.
    pub const ALL: [FailureKind; 7] = [
        FailureKind::Timeout,
        FailureKind::Shed,
        FailureKind::Declined,
        FailureKind::ServerError,
        FailureKind::ClientError,
        FailureKind::Transport,
        FailureKind::NotSent,
    ];

    /// The name used in JSON, CSV and tables.
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Shed => "shed",
            FailureKind::Declined => "declined",
            FailureKind::ServerError => "server_error",
            FailureKind::ClientError => "client_error",
            FailureKind::Transport => "transport",
            FailureKind::NotSent => "not_sent",
        }
    }
}

/// Counts of outcomes: accepted plus one counter per failure kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// 2xx answers.
    pub accepted: u64,
    /// See [`FailureKind::Timeout`].
    pub timeout: u64,
    /// See [`FailureKind::Shed`].
    pub shed: u64,
    /// See [`FailureKind::Declined`].
    pub declined: u64,
    /// See [`FailureKind::ServerError`].
    pub server_error: u64,
    /// See [`FailureKind::ClientError`].
    pub client_error: u64,
    /// See [`FailureKind::Transport`].
    pub transport: u64,
    /// See [`FailureKind::NotSent`].
    pub not_sent: u64,
}

impl OutcomeCounts {
    /// Counts one outcome.
    pub fn add(&mut self, outcome: Outcome) {
        *match outcome {
            Outcome::Accepted => &mut self.accepted,
            Outcome::Failed(kind) => self.failure_mut(kind),
        } += 1;
    }

    fn failure_mut(&mut self, kind: FailureKind) -> &mut u64 {
        match kind {
            FailureKind::Timeout => &mut self.timeout,
            FailureKind::Shed => &mut self.shed,
            FailureKind::Declined => &mut self.declined,
            FailureKind::ServerError => &mut self.server_error,
            FailureKind::ClientError => &mut self.client_error,
            FailureKind::Transport => &mut self.transport,
            FailureKind::NotSent => &mut self.not_sent,
        }
    }

    /// The count of one failure kind.
    pub fn failures_of(&self, kind: FailureKind) -> u64 {
        let mut copy = *self;
        *copy.failure_mut(kind)
    }

    /// All failures together.
    pub fn failed(&self) -> u64 {
        FailureKind::ALL.iter().map(|&kind| self.failures_of(kind)).sum()
    }

    /// Every outcome counted.
    pub fn total(&self) -> u64 {
        self.accepted + self.failed()
    }

    /// Adds another set of counts into this one.
    pub fn merge(&mut self, other: &OutcomeCounts) {
        self.accepted += other.accepted;
        for kind in FailureKind::ALL {
            *self.failure_mut(kind) += other.failures_of(kind);
        }
    }

    /// Accepted as a percentage of all outcomes (0 when there were none).
    pub fn accepted_pct(&self) -> f64 {
        percent(self.accepted, self.total())
    }
}

/// `part` as a percentage of `whole`, 0 when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { 100.0 * part as f64 / whole as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_documented_classes() {
        let kind = |code: u16| Outcome::from_status(StatusCode::from_u16(code).unwrap());
        assert_eq!(kind(200), Outcome::Accepted);
        assert_eq!(kind(202), Outcome::Accepted);
        assert_eq!(kind(402), Outcome::Failed(FailureKind::Declined));
        assert_eq!(kind(503), Outcome::Failed(FailureKind::Shed));
        assert_eq!(kind(504), Outcome::Failed(FailureKind::Timeout));
        assert_eq!(kind(500), Outcome::Failed(FailureKind::ServerError));
        assert_eq!(kind(422), Outcome::Failed(FailureKind::ClientError));
        assert_eq!(kind(301), Outcome::Failed(FailureKind::ClientError));
    }

    #[test]
    fn counts_add_up() {
        let mut counts = OutcomeCounts::default();
        counts.add(Outcome::Accepted);
        counts.add(Outcome::Failed(FailureKind::Timeout));
        counts.add(Outcome::Failed(FailureKind::Timeout));
        counts.add(Outcome::Failed(FailureKind::NotSent));
        let mut merged = counts;
        merged.merge(&counts);
        assert_eq!((counts.total(), counts.failed(), counts.timeout), (4, 3, 2));
        assert_eq!((merged.total(), merged.not_sent), (8, 2));
        assert_eq!(counts.accepted_pct(), 25.0);
    }
}
