//! The per-entry results of one batch operation.
//!
//! A batch operation of the port (PublishBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch) can succeed
//! as a whole while some entries fail, and a publish may take more than one SDK call (SNS limits a batch's
//! total size). Each entry is sent once: a failed entry is classified (`SenderFault=false` makes it
//! retryable) and reported, never sent again here.
//!
//! Why not retry here: the callers already batch entries and retry them with knowledge this adapter lacks (the
//! worker's batcher knows its shutdown deadline and that a delete is pointless once the visibility timeout has
//! passed; the receiver's batcher knows how long its request may wait), and they do so over the embedded bus
//! too. Retrying here as well multiplied their budgets. What stays below this layer are the SDK's own retries
//! of a whole call (throttling, 5xx, timeouts; see `error`).

use std::collections::HashMap;

use super::error::{Call, classify_entry};
use crate::{BusError, EntryResult};

/// The results of one batch operation, filled in as its calls return.
///
/// ```text
/// let mut batch = EntryAnswers::new(n);
/// // entries failing a local check: batch.record(i, Err(..))
/// let indices = batch.unanswered();
/// match call(&indices).await {
///     Ok(per_entry) => for (i, r) in per_entry { batch.record(i, r) },
///     Err(e) => batch.record_call_failure(&indices, e),
/// }
/// batch.finish()
/// ```
pub(crate) struct EntryAnswers<T> {
    results: Vec<Option<EntryResult<T>>>,
    /// Whether any entry got its own answer (from the broker, or from a local check).
    any_entry_answered: bool,
    /// The most recent failure of a whole call.
    call_failure: Option<BusError>,
}

impl<T> EntryAnswers<T> {
    pub(crate) fn new(len: usize) -> Self {
        Self { results: (0..len).map(|_| None).collect(), any_entry_answered: false, call_failure: None }
    }

    /// The entries with no result yet: the ones to send.
    pub(crate) fn unanswered(&self) -> Vec<usize> {
        (0..self.results.len()).filter(|&i| self.results[i].is_none()).collect()
    }

    /// Records one entry's own result, final whatever it is.
    pub(crate) fn record(&mut self, index: usize, result: EntryResult<T>) {
        self.any_entry_answered = true;
        self.results[index] = Some(result);
    }

    /// Records that a whole call carrying `indices` failed (after the SDK's own retries of it).
    pub(crate) fn record_call_failure(&mut self, indices: &[usize], error: BusError) {
        for &i in indices {
            self.results[i] = Some(Err(error.clone()));
        }
        self.call_failure = Some(error);
    }

    /// One result per entry, in order; or the call failure itself when no entry got an answer of its own
    /// (the whole batch failed, which is what the port's outer error means).
    ///
    /// # Panics
    /// If an entry was never sent nor answered: the adapter must send every entry [`Self::unanswered`] names.
    pub(crate) fn finish(self) -> Result<Vec<EntryResult<T>>, BusError> {
        if let (false, Some(error)) = (self.any_entry_answered, self.call_failure) {
            return Err(error);
        }
        Ok(self
            .results
            .into_iter()
            .map(|result| result.expect("every entry of a batch is sent once and answered"))
            .collect())
    }
}

/// A failed entry of a batch response (SNS and SQS each have their own `BatchResultErrorEntry` type).
pub(crate) struct FailedEntry<'a> {
    pub id: &'a str,
    pub code: &'a str,
    pub message: Option<&'a str>,
    pub sender_fault: bool,
}

/// Pairs a batch response with the entries sent, whose ids are their indices in the caller's batch. An entry
/// the broker left out of both lists is reported as [`BusError::IncompleteResponse`] (retryable) rather than
/// assumed done.
pub(crate) fn match_entries<'a, T>(
    indices: &[usize],
    succeeded: impl IntoIterator<Item = (&'a str, T)>,
    failed: impl IntoIterator<Item = FailedEntry<'a>>,
    call: Call<'_>,
) -> Vec<(usize, EntryResult<T>)> {
    let mut answers: HashMap<&str, EntryResult<T>> =
        succeeded.into_iter().map(|(id, value)| (id, Ok(value))).collect();
    for entry in failed {
        answers.insert(entry.id, Err(classify_entry(entry.code, entry.message, entry.sender_fault, call)));
    }
    indices
        .iter()
        .map(|&i| {
            let answer = answers.remove(i.to_string().as_str()).unwrap_or_else(|| {
                Err(BusError::IncompleteResponse(format!(
                    "{} on {} answered without entry {i}",
                    call.action, call.resource
                )))
            });
            (i, answer)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttled() -> BusError {
        BusError::Transient { code: "Throttling".into(), message: String::new() }
    }

    #[test]
    fn matches_answers_to_the_entries_sent() {
        let call = Call::new("sqs:DeleteMessage", "q");
        let failed = [
            FailedEntry {
                id: "3",
                code: "ReceiptHandleIsInvalid",
                message: Some("stale"),
                sender_fault: true,
            },
            FailedEntry { id: "5", code: "InternalError", message: None, sender_fault: false },
        ];
        let results = match_entries(&[1, 3, 5, 7], [("1", "a")], failed, call);
        assert_eq!(results[0], (1, Ok("a")));
        assert!(matches!(results[1], (3, Err(BusError::ReceiptHandleInvalid(_)))));
        assert!(matches!(&results[2], (5, Err(e)) if e.is_retryable()));
        let (7, Err(unanswered @ BusError::IncompleteResponse(detail))) = &results[3] else {
            panic!("{:?}", results[3])
        };
        assert!(detail.contains("entry 7"), "{detail}");
        assert!(unanswered.is_retryable());
    }

    #[test]
    fn every_entry_is_sent_once_whatever_its_answer() {
        let mut batch = EntryAnswers::<u32>::new(4);
        batch.record(3, Err(BusError::InvalidParameter("empty body".into())));
        let sent = batch.unanswered();
        assert_eq!(sent, vec![0, 1, 2], "an entry failing a local check is not sent");
        batch.record(0, Ok(0));
        batch.record(1, Err(BusError::ReceiptHandleInvalid("x".into())));
        batch.record(2, Err(throttled()));
        assert!(batch.unanswered().is_empty(), "a retryable failure is the caller's to retry");
        let results = batch.finish().unwrap();
        assert_eq!(results[0], Ok(0));
        assert!(matches!(results[1], Err(BusError::ReceiptHandleInvalid(_))));
        assert_eq!(results[2], Err(throttled()));
        assert!(matches!(results[3], Err(BusError::InvalidParameter(_))));
    }

    #[test]
    fn a_failed_whole_call_is_the_outer_error() {
        let mut batch = EntryAnswers::<()>::new(2);
        let indices = batch.unanswered();
        batch.record_call_failure(&indices, BusError::Timeout);
        assert!(batch.unanswered().is_empty(), "whole-call failures were already retried by the SDK");
        assert_eq!(batch.finish(), Err(BusError::Timeout));
    }

    #[test]
    fn a_whole_call_failure_stays_per_entry_when_other_entries_were_answered() {
        // Two calls (SNS's size limit split the batch): the first answered, the second failed as a whole.
        let mut batch = EntryAnswers::<()>::new(2);
        batch.record(0, Ok(()));
        batch.record_call_failure(&[1], BusError::Timeout);
        assert_eq!(batch.finish(), Ok(vec![Ok(()), Err(BusError::Timeout)]));
    }
}
