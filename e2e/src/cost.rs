//! What the AWS requests counted by the proxy cost per order, at list prices.
//!
//! The prices are in US dollars per million, us-east-1, as of November 2024 (the month of DynamoDB's
//! on-demand price cut; SNS and SQS prices were unchanged by it):
//!
//! - SNS: $0.50 per million publish requests, each 64 KB chunk of a request counting as one (a PublishBatch
//!   of ten small orders is one). Deliveries from SNS to SQS are not billed by SNS, and they never pass the
//!   proxy, so they are not counted here.
//! - SQS: $0.40 per million requests (standard queue, after the free tier), each 64 KB chunk counting as one
//!   (a batch of ten is one).
//! - DynamoDB on demand: $0.625 per million write request units and $0.125 per million read request units. An
//!   item under 1 KB costs 1 write unit per PutItem/UpdateItem (a write whose condition fails costs it too),
//!   and a strongly consistent GetItem of an item under 4 KB 1 read unit (the ledger reads consistently), so
//!   the single-item requests counted are the units billed. The ledger's items are a few hundred bytes.

use std::fmt;

use crate::RequestCounts;

/// SNS, dollars per million publish requests (64 KB chunks).
pub const SNS_PER_MILLION_REQUESTS: f64 = 0.50;
/// SQS standard queue, dollars per million requests (64 KB chunks), after the free tier.
pub const SQS_PER_MILLION_REQUESTS: f64 = 0.40;
/// DynamoDB on demand, dollars per million write request units (one per write of an item under 1 KB).
pub const DYNAMODB_PER_MILLION_WRITE_UNITS: f64 = 0.625;
/// DynamoDB on demand, dollars per million read request units (one per consistent read under 4 KB).
pub const DYNAMODB_PER_MILLION_READ_UNITS: f64 = 0.125;

/// DynamoDB operations that read one item.
pub const DYNAMODB_READS: &[&str] = &["dynamodb:GetItem"];
/// DynamoDB operations that write one item.
pub const DYNAMODB_WRITES: &[&str] = &["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"];

/// Requests per order of one process's path, by service.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PerOrder {
    /// SNS requests.
    pub sns: f64,
    /// SQS requests, idle receives included.
    pub sqs: f64,
    /// SQS receives that delivered nothing (idle long polls): part of `sqs`, a fixed cost per poller rather
    /// than per order.
    pub sqs_idle: f64,
    /// DynamoDB single-item reads (GetItem).
    pub dynamodb_reads: f64,
    /// DynamoDB single-item writes (PutItem, UpdateItem, DeleteItem).
    pub dynamodb_writes: f64,
    /// Other DynamoDB requests (batch, query, table management): shown but not priced, since their units are
    /// not one per request.
    pub dynamodb_other: f64,
    /// The SDK's retries, of any service: part of the figures above (AWS bills them too).
    pub retries: f64,
}

impl PerOrder {
    /// The requests in `counts`, per order of `orders`.
    pub fn of(counts: &RequestCounts, orders: u64) -> Self {
        let per_order = |count: u64| count as f64 / orders.max(1) as f64;
        let sum = |operations: &[&str]| operations.iter().map(|operation| counts.operation(operation)).sum();
        let reads = sum(DYNAMODB_READS);
        let writes = sum(DYNAMODB_WRITES);
        Self {
            sns: per_order(counts.service("sns")),
            sqs: per_order(counts.service("sqs")),
            sqs_idle: per_order(counts.idle_receives()),
            dynamodb_reads: per_order(reads),
            dynamodb_writes: per_order(writes),
            dynamodb_other: per_order(counts.service("dynamodb") - reads - writes),
            retries: per_order(counts.retries.values().sum()),
        }
    }

    /// Two paths together (the receiver's and the worker's: the whole cost of an order).
    pub fn plus(&self, other: &PerOrder) -> PerOrder {
        PerOrder {
            sns: self.sns + other.sns,
            sqs: self.sqs + other.sqs,
            sqs_idle: self.sqs_idle + other.sqs_idle,
            dynamodb_reads: self.dynamodb_reads + other.dynamodb_reads,
            dynamodb_writes: self.dynamodb_writes + other.dynamodb_writes,
            dynamodb_other: self.dynamodb_other + other.dynamodb_other,
            retries: self.retries + other.retries,
        }
    }

    /// DynamoDB requests of every kind.
    pub fn dynamodb(&self) -> f64 {
        self.dynamodb_reads + self.dynamodb_writes + self.dynamodb_other
    }

    /// The messaging requests (SNS and SQS), idle receives included.
    pub fn messaging(&self) -> f64 {
        self.sns + self.sqs
    }

    /// What a million orders cost at the list prices: the requests per order are the millions of requests.
    pub fn dollars_per_million_orders(&self) -> Dollars {
        Dollars {
            sns: self.sns * SNS_PER_MILLION_REQUESTS,
            sqs: self.sqs * SQS_PER_MILLION_REQUESTS,
            dynamodb: self.dynamodb_writes * DYNAMODB_PER_MILLION_WRITE_UNITS
                + self.dynamodb_reads * DYNAMODB_PER_MILLION_READ_UNITS,
        }
    }
}

impl fmt::Display for PerOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SNS {:.3}, SQS {:.3} (idle receives {:.3}), DynamoDB {:.3} (reads {:.3}, writes {:.3}",
            self.sns,
            self.sqs,
            self.sqs_idle,
            self.dynamodb(),
            self.dynamodb_reads,
            self.dynamodb_writes
        )?;
        if self.dynamodb_other > 0.0 {
            write!(f, ", other {:.3}", self.dynamodb_other)?;
        }
        f.write_str(")")?;
        if self.retries > 0.0 {
            write!(f, "; SDK retries {:.3} of these", self.retries)?;
        }
        Ok(())
    }
}

/// Dollars, by service.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Dollars {
    /// SNS.
    pub sns: f64,
    /// SQS.
    pub sqs: f64,
    /// DynamoDB.
    pub dynamodb: f64,
}

impl Dollars {
    /// All services.
    pub fn total(&self) -> f64 {
        self.sns + self.sqs + self.dynamodb
    }
}

impl fmt::Display for Dollars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SNS ${:.3} + SQS ${:.3} + DynamoDB ${:.3} = ${:.3}",
            self.sns,
            self.sqs,
            self.dynamodb,
            self.total()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(operations: &[(&str, u64)], empty_receives: u64) -> RequestCounts {
        RequestCounts {
            by_operation: operations
                .iter()
                .map(|&(operation, count)| (operation.to_owned(), count))
                .collect(),
            empty_receives,
            ..RequestCounts::default()
        }
    }

    #[test]
    fn splits_requests_per_order_by_service_and_dynamodb_by_reads_and_writes() {
        let mut worker = counts(
            &[
                ("sqs:ReceiveMessage", 30),
                ("sqs:DeleteMessageBatch", 20),
                ("dynamodb:UpdateItem", 600),
                ("dynamodb:DescribeTable", 2),
            ],
            10,
        );
        worker.retries.insert("dynamodb:UpdateItem".to_owned(), 2);
        let per_order = PerOrder::of(&worker, 200);
        assert_eq!(
            per_order,
            PerOrder {
                sns: 0.0,
                sqs: 0.25,
                sqs_idle: 0.05,
                dynamodb_reads: 0.0,
                dynamodb_writes: 3.0,
                dynamodb_other: 0.01,
                retries: 0.01,
            }
        );
        assert_eq!(
            per_order.to_string(),
            "SNS 0.000, SQS 0.250 (idle receives 0.050), DynamoDB 3.010 (reads 0.000, writes 3.000, other 0.010); \
             SDK retries 0.010 of these"
        );
    }

    #[test]
    fn prices_a_million_orders() {
        let receiver = PerOrder::of(&counts(&[("sns:PublishBatch", 20), ("dynamodb:PutItem", 200)], 0), 200);
        let worker = PerOrder::of(
            &counts(
                &[("sqs:ReceiveMessage", 40), ("dynamodb:UpdateItem", 600), ("dynamodb:GetItem", 200)],
                0,
            ),
            200,
        );
        let both = receiver.plus(&worker);
        assert_eq!((both.sns, both.sqs, both.dynamodb_writes, both.dynamodb_reads), (0.1, 0.2, 4.0, 1.0));
        let dollars = both.dollars_per_million_orders();
        // 0.1 x 0.50 + 0.2 x 0.40 + 4 x 0.625 + 1 x 0.125
        assert!((dollars.sns - 0.05).abs() < 1e-12, "{dollars:?}");
        assert!((dollars.sqs - 0.08).abs() < 1e-12, "{dollars:?}");
        assert!((dollars.dynamodb - 2.625).abs() < 1e-12, "{dollars:?}");
        assert_eq!(dollars.to_string(), "SNS $0.050 + SQS $0.080 + DynamoDB $2.625 = $2.755");
        assert_eq!(
            PerOrder::of(&RequestCounts::default(), 0),
            PerOrder::default(),
            "no orders: no division by 0"
        );
    }
}
