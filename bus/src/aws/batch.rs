//! Per-entry retries for batch calls.
//!
//! A batch call (PublishBatch, DeleteMessageBatch, ChangeMessageVisibilityBatch) can succeed as a whole while
//! some entries fail. Entries that failed without being the sender's fault (`SenderFault=false`: throttling,
//! internal errors) are sent again, alone, a bounded number of times; the SDK retries only whole calls, so
//! without this an internal hiccup on one entry would surface as a failure the caller must handle.

use std::collections::HashMap;
use std::time::Duration;

use super::error::{Call, classify_entry};
use crate::{BusError, EntryResult};

/// How many times an entry is sent at most (the first try included). Three keeps the worst case short
/// (0.1 s + 0.2 s of backoff) while riding out a momentary internal error.
const MAX_ATTEMPTS: u32 = 3;

/// Pause before the first retry; doubles for each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

enum Slot<T> {
    /// Not sent yet.
    Pending,
    /// Failed in a way worth retrying.
    Retry(BusError),
    /// Settled: succeeded, or failed for good.
    Done(EntryResult<T>),
}

/// The results of one batch call, filled in attempt by attempt.
///
/// ```text
/// let mut batch = EntryRetries::new(n);
/// while let Some(indices) = batch.next_attempt().await {
///     match call(indices).await {
///         Ok(per_entry) => for (i, r) in per_entry { batch.record(i, r) },
///         Err(e) => batch.record_call_failure(&indices, e),
///     }
/// }
/// batch.finish()
/// ```
pub(crate) struct EntryRetries<T> {
    slots: Vec<Slot<T>>,
    attempts: u32,
    /// Whether any entry got its own answer (from the broker, or from a local check).
    any_entry_answered: bool,
    /// The most recent failure of a whole call.
    call_failure: Option<BusError>,
}

impl<T> EntryRetries<T> {
    pub(crate) fn new(len: usize) -> Self {
        Self {
            slots: (0..len).map(|_| Slot::Pending).collect(),
            attempts: 0,
            any_entry_answered: false,
            call_failure: None,
        }
    }

    /// The indices to send in the next attempt, after the backoff; `None` when every entry is settled or the
    /// attempts are used up (entries still failing keep their last error).
    pub(crate) async fn next_attempt(&mut self) -> Option<Vec<usize>> {
        let unsettled: Vec<usize> = (0..self.slots.len())
            .filter(|&i| matches!(self.slots[i], Slot::Pending | Slot::Retry(_)))
            .collect();
        if unsettled.is_empty() {
            return None;
        }
        if self.attempts >= MAX_ATTEMPTS {
            for &i in &unsettled {
                if let Slot::Retry(error) = std::mem::replace(&mut self.slots[i], Slot::Pending) {
                    self.slots[i] = Slot::Done(Err(error));
                }
            }
            return None;
        }
        if self.attempts > 0 {
            tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(self.attempts - 1)).await;
        }
        self.attempts += 1;
        Some(unsettled)
    }

    /// Records one entry's own result; a retryable failure is retried while attempts remain.
    pub(crate) fn record(&mut self, index: usize, result: EntryResult<T>) {
        self.any_entry_answered = true;
        self.slots[index] = match result {
            Err(error) if error.is_retryable() => Slot::Retry(error),
            settled => Slot::Done(settled),
        };
    }

    /// Records that a whole call carrying `indices` failed. The SDK has already retried it, so these entries
    /// are settled with that error.
    pub(crate) fn record_call_failure(&mut self, indices: &[usize], error: BusError) {
        for &i in indices {
            self.slots[i] = Slot::Done(Err(error.clone()));
        }
        self.call_failure = Some(error);
    }

    /// One result per entry, in order; or the call failure itself when no entry got an answer of its own
    /// (the whole batch failed, which is what the port's outer error means).
    pub(crate) fn finish(self) -> Result<Vec<EntryResult<T>>, BusError> {
        if let (false, Some(error)) = (self.any_entry_answered, self.call_failure) {
            return Err(error);
        }
        Ok(self
            .slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Done(result) => result,
                Slot::Retry(error) => Err(error),
                Slot::Pending => Err(BusError::Transient {
                    code: "NotAttempted".into(),
                    message: "entry was never sent".into(),
                }),
            })
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
/// the broker left out of both lists is reported as a retryable failure rather than assumed done.
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
                Err(BusError::Transient {
                    code: "MissingFromResponse".into(),
                    message: format!("{} answered without entry {i}", call.action),
                })
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
        assert!(
            matches!(&results[3], (7, Err(BusError::Transient { code, .. })) if code == "MissingFromResponse")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_retryable_entries_then_gives_up() {
        let mut batch = EntryRetries::<u32>::new(3);
        let mut sent = Vec::new();
        while let Some(indices) = batch.next_attempt().await {
            sent.push(indices.clone());
            for i in indices {
                match i {
                    0 => batch.record(0, Ok(0)),
                    1 => batch.record(1, Err(BusError::ReceiptHandleInvalid("x".into()))),
                    _ => batch.record(2, Err(throttled())),
                }
            }
        }
        assert_eq!(sent, vec![vec![0, 1, 2], vec![2], vec![2]]);
        let results = batch.finish().unwrap();
        assert_eq!(results[0], Ok(0));
        assert!(matches!(results[1], Err(BusError::ReceiptHandleInvalid(_))));
        assert_eq!(results[2], Err(throttled()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_succeeds_replaces_the_error() {
        let mut batch = EntryRetries::<&str>::new(2);
        let mut attempt = 0;
        while let Some(indices) = batch.next_attempt().await {
            attempt += 1;
            for i in indices {
                batch.record(i, if attempt == 1 && i == 1 { Err(throttled()) } else { Ok("ok") });
            }
        }
        assert_eq!(batch.finish().unwrap(), vec![Ok("ok"), Ok("ok")]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_whole_call_is_the_outer_error() {
        let mut batch = EntryRetries::<()>::new(2);
        let indices = batch.next_attempt().await.unwrap();
        batch.record_call_failure(&indices, BusError::Timeout);
        assert!(batch.next_attempt().await.is_none(), "whole-call failures were already retried by the SDK");
        assert_eq!(batch.finish(), Err(BusError::Timeout));
    }

    #[tokio::test(start_paused = true)]
    async fn a_whole_call_failure_on_a_retry_stays_per_entry() {
        let mut batch = EntryRetries::<()>::new(2);
        let indices = batch.next_attempt().await.unwrap();
        batch.record(indices[0], Ok(()));
        batch.record(indices[1], Err(throttled()));
        let retry = batch.next_attempt().await.unwrap();
        assert_eq!(retry, vec![1]);
        batch.record_call_failure(&retry, BusError::Timeout);
        assert_eq!(batch.finish(), Ok(vec![Ok(()), Err(BusError::Timeout)]));
    }
}
