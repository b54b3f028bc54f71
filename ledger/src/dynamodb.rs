//! The ledger on DynamoDB: one item per order, every rule of the port a conditional write.
//!
//! Each port call is one request (PutItem, GetItem or UpdateItem) whose `ConditionExpression` is the rule, so
//! any number of processes can call at once and DynamoDB serialises them per item. A failed condition is an
//! answer, not an error: `ReturnValuesOnConditionCheckFailure=ALL_OLD` hands back the item as it was, so the
//! caller learns why without a second read.
//!
//! Item attributes (the API's field names): `order_id` S (hash key), `customer_id` N, `total` S
//! (`"100.28"`), `item_count` N, `status` S, `accepted_at` S and `updated_at` S (RFC 3339), `attempts` N,
//! `charges` N, `payment_outcome` S, `payment_reference` S, `last_error` S, `worker` S, `lease_expires_at` N
//! (epoch milliseconds, compared in conditions) and `expires_at` N (epoch seconds, the table's TTL
//! attribute). Absent optional fields are absent attributes.
//!
//! Expiry: DynamoDB deletes an item "typically within a few days" after its `expires_at`, so this adapter
//! treats an item past it as absent itself, like the embedded adapter: `get` answers `None`; `create`
//! replaces it; `record_charge`, `settle`, `release` and `abandon` find no record. `claim` is the one call
//! that may take two requests: its update cannot reset an old record's fields, so when its condition fails on
//! an expired item it replaces that item with a fresh claimed record (a PutItem conditional on the item being
//! absent or expired still). That happens only for an order last written more than the retention ago (7 days
//! by default).
//!
//! The worker registry lives in the same table, in one item of its own (see `registry.rs`): a heartbeat is
//! one UpdateItem of that item, reading the fleet one GetItem.
//!
//! Timestamps in conditions and expiry have DynamoDB's number granularity: leases in milliseconds, expiry in
//! whole seconds (an item is expired once `expires_at <= now` in epoch seconds).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ReturnValuesOnConditionCheckFailure, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
    TimeToLiveStatus,
};
use chrono::{DateTime, SecondsFormat, Utc};
use orders::{Money, OrderStatus, PaymentOutcome};
use uuid::Uuid;

mod keys;
mod registry;

pub use registry::REGISTRY_KEY;

use crate::registry::WorkerRegistry;
use crate::{
    ChargeRecord, Claim, ClaimRequest, Ledger, LedgerError, NewOrder, OrderRecord, PaymentRecord, Settle,
    Settlement, expiry, outcome_name, parse_outcome, parse_status, status_name,
};

/// An item as the SDK carries it.
type Item = HashMap<String, AttributeValue>;

// The attribute names, which are also the API's field names.
const ORDER_ID: &str = "order_id";
const CUSTOMER_ID: &str = "customer_id";
const TOTAL: &str = "total";
const ITEM_COUNT: &str = "item_count";
const STATUS: &str = "status";
const ACCEPTED_AT: &str = "accepted_at";
const UPDATED_AT: &str = "updated_at";
const ATTEMPTS: &str = "attempts";
const CHARGES: &str = "charges";
const PAYMENT_OUTCOME: &str = "payment_outcome";
const PAYMENT_REFERENCE: &str = "payment_reference";
const LAST_ERROR: &str = "last_error";
const WORKER: &str = "worker";
const LEASE_EXPIRES_AT: &str = "lease_expires_at";
/// The TTL attribute: epoch seconds, as DynamoDB's TTL requires.
pub const EXPIRES_AT: &str = "expires_at";

/// Longest one DynamoDB request attempt may take before the connection is treated as hung. Single-item
/// requests answer in milliseconds; a worker must not sit on a dead connection with its lease running.
/// Applied only when the configuration sets no attempt timeout of its own.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`create_table`] waits for a new table to become active (AWS takes seconds; emulators none).
const TABLE_ACTIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// The ledger in a DynamoDB table keyed by `order_id` (see [`create_table`]).
///
/// Needs `dynamodb:PutItem`, `dynamodb:GetItem` and `dynamodb:UpdateItem` on the table. Cheap to clone: the
/// SDK client shares one connection pool.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: Client,
    table: String,
    retention: Duration,
}

impl DynamoLedger {
    /// A ledger in `table`, keeping each record for `retention` after its last write (normally
    /// [`crate::DEFAULT_RETENTION`]). Takes the `SdkConfig` the binary already loaded, so the standard chain
    /// and the `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_DYNAMODB` overrides apply as for SNS/SQS.
    pub fn new(config: &SdkConfig, table: impl Into<String>, retention: Duration) -> Self {
        let timeouts = config.timeout_config().cloned().unwrap_or_else(|| TimeoutConfig::builder().build());
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(config);
        if timeouts.operation_attempt_timeout().is_none() {
            dynamodb = dynamodb
                .timeout_config(timeouts.to_builder().operation_attempt_timeout(ATTEMPT_TIMEOUT).build());
        }
        Self { client: Client::from_conf(dynamodb.build()), table: table.into(), retention }
    }

    /// The table written to.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn call(&self, action: &'static str) -> Call<'_> {
        Call { action, table: &self.table }
    }

    /// One conditional UpdateItem of an order's item. `Ok(Ok(item))` when it was written (the new item if
    /// `return_new`), `Ok(Err(item))` when the condition failed (the item as it was, `None` if absent).
    async fn update(
        &self,
        item_key: AttributeValue,
        write: Write,
        return_new: bool,
    ) -> Result<Written, LedgerError> {
        let call = self.call("dynamodb:UpdateItem");
        // DynamoDB refuses a value no expression uses (emulators may not): catch it in every test run.
        debug_assert!(
            write
                .values
                .keys()
                .all(|k| write.update.contains(k.as_str()) || write.condition.contains(k.as_str())),
            "unused expression value in {:?} / {:?}: {:?}",
            write.update,
            write.condition,
            write.values.keys()
        );
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(ORDER_ID, item_key)
            .update_expression(&write.update)
            .condition_expression(&write.condition)
            .set_expression_attribute_names(Some(attribute_names(&[&write.update, &write.condition])))
            .set_expression_attribute_values(Some(write.values))
            .return_values(if return_new { ReturnValue::AllNew } else { ReturnValue::None })
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(output) => Ok(Ok(output.attributes)),
            Err(SdkError::ServiceError(service)) if service.err().is_conditional_check_failed_exception() => {
                let UpdateItemError::ConditionalCheckFailedException(failed) = service.into_err() else {
                    unreachable!("checked above")
                };
                Ok(Err(failed.item))
            }
            Err(error) => Err(from_sdk_error(&error, call)),
        }
    }

    /// PutItem of a whole item, unless a live item holds its key. `Ok(Err(item))`: the live item there.
    async fn put_if_absent(&self, item: Item, now: DateTime<Utc>) -> Result<Written, LedgerError> {
        let call = self.call("dynamodb:PutItem");
        let condition = format!("attribute_not_exists(#{ORDER_ID}) OR #{EXPIRES_AT} <= :now_s");
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(&condition)
            .set_expression_attribute_names(Some(attribute_names(&[&condition])))
            .expression_attribute_values(":now_s", epoch_s(now))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Ok(None)),
            Err(SdkError::ServiceError(service)) if service.err().is_conditional_check_failed_exception() => {
                let PutItemError::ConditionalCheckFailedException(failed) = service.into_err() else {
                    unreachable!("checked above")
                };
                Ok(Err(failed.item))
            }
            Err(error) => Err(from_sdk_error(&error, call)),
        }
    }

    /// The common tail of every write: the new update time and expiry.
    fn touch(&self, values: &mut Item, now: DateTime<Utc>) {
        values.insert(":now".into(), timestamp(now));
        values.insert(":expires_s".into(), epoch_s(expiry(now, self.retention)));
        values.insert(":now_s".into(), epoch_s(now));
    }

    /// A claim that met an item past its expiry: the item stands for no record, so a fresh claimed record
    /// replaces it (as the embedded adapter would create one), unless a live item took its place meanwhile.
    async fn claim_expired(&self, request: &ClaimRequest, now: DateTime<Utc>) -> Result<Claim, LedgerError> {
        let order_id = request.order.order_id;
        tracing::warn!(%order_id, table = %self.table, "claim found an expired item; replacing it");
        let mut record = OrderRecord::pending(&request.order, now, self.retention);
        record.status = OrderStatus::Processing;
        record.attempts = 1;
        record.worker = Some(request.worker.clone());
        record.lease_expires_at = Some(expiry(now, request.lease));
        match self.put_if_absent(to_item(&record), now).await? {
            Ok(_) => {
                // Read back as stored, so the record has the store's precision (expiry in whole seconds).
                let record = from_item(&to_item(&record))?;
                Ok(Claim::Won { token: record.attempts, record })
            }
            Err(Some(item)) => {
                let record = from_item(&item)?;
                // Someone wrote a live record first: whatever it is, this claim did not take it.
                Ok(if record.is_settled() { Claim::Settled(record) } else { Claim::Busy(record) })
            }
            Err(None) => Err(vanished(order_id)),
        }
    }
}

/// The result of a conditional write: `Ok(new item)` or `Err(old item)` when the condition failed.
type Written = Result<Option<Item>, Option<Item>>;

/// An update and its condition, with the values they use (`#name` placeholders are derived from the text).
struct Write {
    update: String,
    condition: String,
    values: Item,
}

#[async_trait]
impl Ledger for DynamoLedger {
    async fn create(&self, order: &NewOrder) -> Result<bool, LedgerError> {
        let now = Utc::now();
        let record = OrderRecord::pending(order, now, self.retention);
        let created = self.put_if_absent(to_item(&record), now).await?.is_ok();
        if !created {
            tracing::debug!(order_id = %order.order_id, "create: a record exists already");
        }
        Ok(created)
    }

    async fn get(&self, order_id: Uuid) -> Result<Option<OrderRecord>, LedgerError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key(ORDER_ID, key(order_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|error| from_sdk_error(&error, self.call("dynamodb:GetItem")))?;
        let Some(item) = output.item else { return Ok(None) };
        let record = from_item(&item)?;
        Ok((!is_expired(&record, Utc::now())).then_some(record))
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Claim, LedgerError> {
        let now = Utc::now();
        let order = &request.order;
        let mut values = Item::from([
            (":processing".into(), s(status_name(OrderStatus::Processing))),
            (":pending".into(), s(status_name(OrderStatus::Pending))),
            (":failed".into(), s(status_name(OrderStatus::Failed))),
            (":worker".into(), s(&request.worker)),
            (":lease_ms".into(), epoch_ms(expiry(now, request.lease))),
            (":now_ms".into(), epoch_ms(now)),
            (":zero".into(), n(0)),
            (":one".into(), n(1)),
            (":customer_id".into(), n(order.customer_id)),
            (":total".into(), s(&order.total.to_string())),
            (":item_count".into(), n(order.item_count)),
            (":accepted_at".into(), timestamp(order.accepted_at)),
        ]);
        self.touch(&mut values, now);
        let write = Write {
            // The record is created from the message if the receiver's write is missing.
            update: "SET #status = :processing, #worker = :worker, #lease_expires_at = :lease_ms, \
                     #updated_at = :now, #expires_at = :expires_s, \
                     #attempts = if_not_exists(#attempts, :zero) + :one, \
                     #charges = if_not_exists(#charges, :zero), \
                     #customer_id = if_not_exists(#customer_id, :customer_id), \
                     #total = if_not_exists(#total, :total), \
                     #item_count = if_not_exists(#item_count, :item_count), \
                     #accepted_at = if_not_exists(#accepted_at, :accepted_at)"
                .into(),
            // No record; or a live one that is pending, failed (redriven), or processing with no lease or a
            // lapsed one.
            condition: "attribute_not_exists(#order_id) OR (#expires_at > :now_s AND (#status = :pending OR \
                        #status = :failed OR \
                        (#status = :processing AND (attribute_not_exists(#lease_expires_at) OR \
                        #lease_expires_at <= :now_ms))))"
                .into(),
            values,
        };
        match self.update(key(order.order_id), write, true).await? {
            Ok(Some(item)) => {
                let record = from_item(&item)?;
                Ok(Claim::Won { token: record.attempts, record })
            }
            Ok(None) => Err(LedgerError::Corrupt(format!("claim of {} returned no item", order.order_id))),
            Err(Some(item)) => {
                let record = from_item(&item)?;
                if is_expired(&record, now) {
                    self.claim_expired(request, now).await
                } else if record.is_settled() {
                    Ok(Claim::Settled(record))
                } else {
                    tracing::debug!(order_id = %order.order_id, owner = ?record.worker, "claim: busy");
                    Ok(Claim::Busy(record))
                }
            }
            // The condition accepts an absent item, so one must have been there.
            Err(None) => Err(vanished(order.order_id)),
        }
    }

    async fn record_charge(
        &self,
        order_id: Uuid,
        payment: &PaymentRecord,
    ) -> Result<ChargeRecord, LedgerError> {
        let now = Utc::now();
        let approved = payment.outcome == PaymentOutcome::Approved;
        let mut values = Item::from([
            (":outcome".into(), s(outcome_name(payment.outcome))),
            (":reference".into(), s(&payment.reference)),
        ]);
        self.touch(&mut values, now);
        // `charges` counts real charges: incremented by an approved one, never set.
        let add = if approved {
            values.insert(":one".into(), n(1));
            " ADD #charges :one"
        } else {
            ""
        };
        let write = Write {
            update: format!(
                "SET #payment_outcome = :outcome, #payment_reference = :reference, #updated_at = :now, \
                 #expires_at = :expires_s{add}"
            ),
            condition: "attribute_exists(#order_id) AND attribute_not_exists(#payment_reference) AND \
                        #expires_at > :now_s"
                .into(),
            values,
        };
        match self.update(key(order_id), write, true).await? {
            Ok(Some(item)) => Ok(ChargeRecord::Recorded(from_item(&item)?)),
            Ok(None) => Err(LedgerError::Corrupt(format!("charge record of {order_id} returned no item"))),
            Err(item) => {
                let record =
                    item.as_ref().map(from_item).transpose()?.filter(|record| !is_expired(record, now));
                match record {
                    None => Err(LedgerError::Rejected(format!("no record of order {order_id} to charge"))),
                    Some(record) => match record.payment() {
                        Some(first) => Ok(ChargeRecord::AlreadyRecorded(first)),
                        None => Err(LedgerError::Corrupt(format!(
                            "charge record of {order_id} refused, yet the record has no payment: {record:?}"
                        ))),
                    },
                }
            }
        }
    }

    async fn settle(
        &self,
        order_id: Uuid,
        token: u32,
        worker: &str,
        settlement: &Settlement,
    ) -> Result<Settle, LedgerError> {
        let now = Utc::now();
        let mut values = Item::from([
            (":status".into(), s(status_name(settlement.status()))),
            (":processing".into(), s(status_name(OrderStatus::Processing))),
            (":token".into(), n(token)),
            (":worker".into(), s(worker)),
        ]);
        self.touch(&mut values, now);
        let last_error = match settlement {
            Settlement::Failed(reason) => {
                values.insert(":last_error".into(), s(reason));
                ", #last_error = :last_error"
            }
            _ => "",
        };
        let write = Write {
            update: format!(
                "SET #status = :status, #worker = :worker, #updated_at = :now, #expires_at = :expires_s\
                 {last_error} REMOVE #lease_expires_at"
            ),
            // The fencing rule: only the latest claim's holder settles, and only once.
            condition: "#status = :processing AND #attempts = :token AND #expires_at > :now_s".into(),
            values,
        };
        match self.update(key(order_id), write, true).await? {
            Ok(Some(item)) => Ok(Settle::Settled(from_item(&item)?)),
            Ok(None) => Err(LedgerError::Corrupt(format!("settle of {order_id} returned no item"))),
            Err(item) => {
                let record =
                    item.as_ref().map(from_item).transpose()?.filter(|record| !is_expired(record, now));
                let current = record.as_ref().map(|r| (r.status, r.attempts));
                tracing::debug!(%order_id, token, ?current, "settle: fenced");
                Ok(Settle::Fenced(record))
            }
        }
    }

    async fn release(&self, order_id: Uuid, token: u32, reason: &str) -> Result<bool, LedgerError> {
        let now = Utc::now();
        let mut values = Item::from([
            (":processing".into(), s(status_name(OrderStatus::Processing))),
            (":token".into(), n(token)),
            (":reason".into(), s(reason)),
            (":now_ms".into(), epoch_ms(now)),
        ]);
        self.touch(&mut values, now);
        let write = Write {
            // The lease ends now, so the next delivery claims the order at once.
            update: "SET #lease_expires_at = :now_ms, #last_error = :reason, #updated_at = :now, \
                     #expires_at = :expires_s"
                .into(),
            condition: "#status = :processing AND #attempts = :token AND #expires_at > :now_s".into(),
            values,
        };
        let released = self.update(key(order_id), write, false).await?.is_ok();
        if !released {
            tracing::debug!(%order_id, token, "release: fenced");
        }
        Ok(released)
    }

    async fn abandon(&self, order_id: Uuid, reason: &str) -> Result<bool, LedgerError> {
        let now = Utc::now();
        let mut values = Item::from([
            (":failed".into(), s(status_name(OrderStatus::Failed))),
            (":pending".into(), s(status_name(OrderStatus::Pending))),
            (":reason".into(), s(reason)),
        ]);
        self.touch(&mut values, now);
        let write = Write {
            update:
                "SET #status = :failed, #last_error = :reason, #updated_at = :now, #expires_at = :expires_s"
                    .into(),
            condition: "#status = :pending AND #expires_at > :now_s".into(),
            values,
        };
        Ok(self.update(key(order_id), write, false).await?.is_ok())
    }

    fn registry(&self) -> Option<&dyn WorkerRegistry> {
        Some(self)
    }
}

/// Creates the ledger's table if it does not exist: on-demand capacity (no throughput to plan for a flash
/// sale), hash key `order_id` (S), and TTL on [`EXPIRES_AT`] so records past their retention are deleted at
/// no cost. Idempotent, for `loadtest infra up` and tests; production tables come from Terraform.
pub async fn create_table(config: &SdkConfig, table: &str) -> Result<(), LedgerError> {
    let client = Client::new(config);
    let call = Call { action: "dynamodb:CreateTable", table };
    let build = |error: aws_sdk_dynamodb::error::BuildError| LedgerError::Fatal {
        code: "BuildError".into(),
        message: error.to_string(),
    };
    let created = client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(ORDER_ID)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(build)?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name(ORDER_ID)
                .key_type(KeyType::Hash)
                .build()
                .map_err(build)?,
        )
        .send()
        .await;
    match created {
        Ok(_) => tracing::info!(table, "created the ledger table"),
        Err(SdkError::ServiceError(service)) if service.err().is_resource_in_use_exception() => {
            tracing::debug!(table, "the ledger table exists already");
        }
        Err(error) => return Err(from_sdk_error(&error, call)),
    }
    wait_until_active(&client, table).await?;

    let call = Call { action: "dynamodb:DescribeTimeToLive", table };
    let ttl = client
        .describe_time_to_live()
        .table_name(table)
        .send()
        .await
        .map_err(|error| from_sdk_error(&error, call))?;
    let ttl = ttl.time_to_live_description();
    let status = ttl.and_then(|ttl| ttl.time_to_live_status());
    let attribute = ttl.and_then(|ttl| ttl.attribute_name());
    match (status, attribute) {
        (Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling), Some(EXPIRES_AT)) => return Ok(()),
        (Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling), Some(other)) => {
            // A table has one TTL attribute; changing it is an operator's decision.
            return Err(LedgerError::Fatal {
                code: "TtlAttributeMismatch".into(),
                message: format!("table {table} expires items on {other:?}, not {EXPIRES_AT:?}"),
            });
        }
        _ => {}
    }
    let spec =
        TimeToLiveSpecification::builder().enabled(true).attribute_name(EXPIRES_AT).build().map_err(build)?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|error| from_sdk_error(&error, Call { action: "dynamodb:UpdateTimeToLive", table }))?;
    tracing::info!(table, attribute = EXPIRES_AT, "enabled TTL on the ledger table");
    Ok(())
}

/// Deletes the ledger's table, for `loadtest infra down`. `Ok(false)` if there was none.
pub async fn delete_table(config: &SdkConfig, table: &str) -> Result<bool, LedgerError> {
    match Client::new(config).delete_table().table_name(table).send().await {
        Ok(_) => Ok(true),
        Err(SdkError::ServiceError(service)) if service.err().is_resource_not_found_exception() => Ok(false),
        Err(error) => Err(from_sdk_error(&error, Call { action: "dynamodb:DeleteTable", table })),
    }
}

/// Polls DescribeTable until the table is ACTIVE: AWS creates tables asynchronously, and UpdateTimeToLive
/// refuses a table still being created. (The SDK's waiter polls every 20 s at least: too slow for tests.)
async fn wait_until_active(client: &Client, table: &str) -> Result<(), LedgerError> {
    let deadline = tokio::time::Instant::now() + TABLE_ACTIVE_TIMEOUT;
    loop {
        let described = client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|error| from_sdk_error(&error, Call { action: "dynamodb:DescribeTable", table }))?;
        let status = described.table().and_then(|t| t.table_status());
        if status == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LedgerError::Unavailable(format!(
                "table {table} not active after {TABLE_ACTIVE_TIMEOUT:?} (status {status:?})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// --- items ----------------------------------------------------------------------------------------------

fn key(order_id: Uuid) -> AttributeValue {
    AttributeValue::S(order_id.to_string())
}

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_owned())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// RFC 3339 with as many fractional digits as needed, so a timestamp reads back exactly.
fn timestamp(time: DateTime<Utc>) -> AttributeValue {
    AttributeValue::S(time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn epoch_s(time: DateTime<Utc>) -> AttributeValue {
    n(time.timestamp())
}

fn epoch_ms(time: DateTime<Utc>) -> AttributeValue {
    n(time.timestamp_millis())
}

/// Whether the item stands for no record: its expiry passed, in whole seconds as the conditions compare.
fn is_expired(record: &OrderRecord, now: DateTime<Utc>) -> bool {
    record.expires_at.timestamp() <= now.timestamp()
}

fn vanished(order_id: Uuid) -> LedgerError {
    // Only a deletion racing the write (TTL, an operator) gets here; the caller retries.
    LedgerError::Unavailable(format!("the item of order {order_id} vanished during a conditional write"))
}

/// A record as a whole item (for PutItem).
fn to_item(record: &OrderRecord) -> Item {
    let mut item = Item::from([
        (ORDER_ID.into(), key(record.order_id)),
        (CUSTOMER_ID.into(), n(record.customer_id)),
        (TOTAL.into(), s(&record.total.to_string())),
        (ITEM_COUNT.into(), n(record.item_count)),
        (STATUS.into(), s(status_name(record.status))),
        (ACCEPTED_AT.into(), timestamp(record.accepted_at)),
        (UPDATED_AT.into(), timestamp(record.updated_at)),
        (ATTEMPTS.into(), n(record.attempts)),
        (CHARGES.into(), n(record.charges)),
        (EXPIRES_AT.into(), epoch_s(record.expires_at)),
    ]);
    let optional = [
        (PAYMENT_OUTCOME, record.payment_outcome.map(|o| s(outcome_name(o)))),
        (PAYMENT_REFERENCE, record.payment_reference.as_deref().map(s)),
        (LAST_ERROR, record.last_error.as_deref().map(s)),
        (WORKER, record.worker.as_deref().map(s)),
        (LEASE_EXPIRES_AT, record.lease_expires_at.map(epoch_ms)),
    ];
    item.extend(optional.into_iter().filter_map(|(name, value)| Some((name.to_owned(), value?))));
    item
}

/// Reads an item as a record; anything missing or malformed is [`LedgerError::Corrupt`].
fn from_item(item: &Item) -> Result<OrderRecord, LedgerError> {
    let item =
        Reader { item, id: item.get(ORDER_ID).and_then(|v| v.as_s().ok()).map_or("?", String::as_str) };
    let status = item.text(STATUS)?;
    let total = item.text(TOTAL)?;
    Ok(OrderRecord {
        order_id: Uuid::parse_str(item.text(ORDER_ID)?)
            .map_err(|_| item.corrupt(ORDER_ID, "is not a uuid"))?,
        customer_id: item.number(CUSTOMER_ID)?,
        total: Money::parse_decimal(total).map_err(|e| item.corrupt(TOTAL, &format!("{e}: {total:?}")))?,
        item_count: item.number(ITEM_COUNT)?,
        status: parse_status(status)
            .ok_or_else(|| item.corrupt(STATUS, &format!("is unknown: {status:?}")))?,
        accepted_at: item.time(ACCEPTED_AT)?,
        updated_at: item.time(UPDATED_AT)?,
        attempts: item.number(ATTEMPTS)?,
        charges: item.number(CHARGES)?,
        payment_outcome: item
            .optional_text(PAYMENT_OUTCOME)?
            .map(|name| {
                parse_outcome(name)
                    .ok_or_else(|| item.corrupt(PAYMENT_OUTCOME, &format!("is unknown: {name:?}")))
            })
            .transpose()?,
        payment_reference: item.optional_text(PAYMENT_REFERENCE)?.map(str::to_owned),
        last_error: item.optional_text(LAST_ERROR)?.map(str::to_owned),
        worker: item.optional_text(WORKER)?.map(str::to_owned),
        lease_expires_at: item
            .optional_number(LEASE_EXPIRES_AT)?
            .map(|ms| item.epoch(LEASE_EXPIRES_AT, ms, DateTime::from_timestamp_millis))
            .transpose()?,
        expires_at: item.epoch(EXPIRES_AT, item.number(EXPIRES_AT)?, |s| DateTime::from_timestamp(s, 0))?,
    })
}

/// Typed access to an item's attributes, with errors that name the order and the attribute.
struct Reader<'a> {
    item: &'a Item,
    id: &'a str,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, name: &str, why: &str) -> LedgerError {
        LedgerError::Corrupt(format!("order {}: attribute {name} {why}", self.id))
    }

    fn optional_text(&self, name: &str) -> Result<Option<&'a str>, LedgerError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(AttributeValue::S(text)) => Ok(Some(text)),
            Some(other) => Err(self.corrupt(name, &format!("is not a string: {other:?}"))),
        }
    }

    fn text(&self, name: &str) -> Result<&'a str, LedgerError> {
        self.optional_text(name)?.ok_or_else(|| self.corrupt(name, "is missing"))
    }

    fn optional_number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, LedgerError> {
        match self.item.get(name) {
            None => Ok(None),
            Some(AttributeValue::N(number)) => number
                .parse()
                .map(Some)
                .map_err(|_| self.corrupt(name, &format!("is out of range: {number}"))),
            Some(other) => Err(self.corrupt(name, &format!("is not a number: {other:?}"))),
        }
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<T, LedgerError> {
        self.optional_number(name)?.ok_or_else(|| self.corrupt(name, "is missing"))
    }

    fn time(&self, name: &str) -> Result<DateTime<Utc>, LedgerError> {
        let text = self.text(name)?;
        DateTime::parse_from_rfc3339(text)
            .map(|time| time.to_utc())
            .map_err(|_| self.corrupt(name, &format!("is not RFC 3339: {text:?}")))
    }

    fn epoch(
        &self,
        name: &str,
        value: i64,
        from: fn(i64) -> Option<DateTime<Utc>>,
    ) -> Result<DateTime<Utc>, LedgerError> {
        from(value).ok_or_else(|| self.corrupt(name, &format!("is out of range: {value}")))
    }
}

/// `ExpressionAttributeNames` for every `#name` in the expressions. Every attribute goes through a
/// placeholder (`status` is a reserved word, others may become one), and DynamoDB refuses unused names, so
/// the map is derived from the text rather than kept beside it.
fn attribute_names(expressions: &[&str]) -> HashMap<String, String> {
    let mut names = BTreeSet::new();
    for expression in expressions {
        let mut rest = *expression;
        while let Some(start) = rest.find('#') {
            let tail = &rest[start + 1..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            names.insert(&tail[..end]);
            rest = &tail[end..];
        }
    }
    names.into_iter().map(|name| (format!("#{name}"), name.to_owned())).collect()
}

// --- errors ---------------------------------------------------------------------------------------------

/// What a call was doing, for error messages: the IAM action it needs and the table.
#[derive(Debug, Clone, Copy)]
struct Call<'a> {
    action: &'static str,
    table: &'a str,
}

/// Codes that mean "too fast, slow down". The SDK has already retried them with backoff by the time they
/// arrive here. `TransactionConflictException` (a transaction holds the item) passes the same way.
const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "TransactionConflictException",
];

/// Codes for passing server-side failures, worth retrying later.
const TRANSIENT_CODES: &[&str] = &[
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "ReplicatedWriteConflictException",
];

/// Codes meaning the credentials themselves were rejected.
const CREDENTIAL_CODES: &[&str] = &[
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "ExpiredToken",
    "ExpiredTokenException",
];

/// Maps an SDK error of any DynamoDB operation. Pure: no I/O, so tests can feed it constructed errors.
fn from_sdk_error<E>(error: &SdkError<E, HttpResponse>, call: Call<'_>) -> LedgerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match error {
        SdkError::ServiceError(service) => classify(
            service.err().code().unwrap_or("Unknown"),
            service.err().message().unwrap_or_default(),
            service.raw().status().as_u16(),
            call,
        ),
        SdkError::ConstructionFailure(_) => LedgerError::Fatal {
            code: "ConstructionFailure".into(),
            message: format!(
                "could not build the {} request ({}); check the AWS region and credentials configuration",
                call.action,
                DisplayErrorContext(error)
            ),
        },
        // Timeouts, connection failures and unreadable responses: the write may or may not have happened.
        _ => LedgerError::Unavailable(format!(
            "{} on {}: {}",
            call.action,
            call.table,
            DisplayErrorContext(error)
        )),
    }
}

/// Classifies a DynamoDB error code (with its HTTP status).
fn classify(code: &str, message: &str, http_status: u16, call: Call<'_>) -> LedgerError {
    // The JSON protocol may carry the shape's full name, "com.amazonaws.dynamodb.v20120810#Code".
    let short = code.rsplit('#').next().unwrap_or(code);
    if THROTTLING_CODES.contains(&short) {
        LedgerError::Throttled(format!("{short}: {message} ({} on {})", call.action, call.table))
    } else if TRANSIENT_CODES.contains(&short) || http_status >= 500 {
        LedgerError::Unavailable(format!("{short}: {message} ({} on {})", call.action, call.table))
    } else {
        let hint = if CREDENTIAL_CODES.contains(&short) {
            "the AWS credentials were rejected; check AWS_PROFILE / AWS_ACCESS_KEY_ID or the task role"
                .to_owned()
        } else if short.starts_with("AccessDenied") || http_status == 403 {
            format!("the caller's IAM policy must allow {} on table {}", call.action, call.table)
        } else if short == "ResourceNotFoundException" {
            format!(
                "table {} does not exist for this account, region and endpoint; check ORDERS_TABLE, \
                 AWS_REGION and AWS_ENDPOINT_URL (for an emulator, create it with `loadtest infra up`)",
                call.table
            )
        } else {
            format!("{} on {}", call.action, call.table)
        };
        LedgerError::Fatal { code: short.to_owned(), message: format!("{message}: {hint}") }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::types::error::ProvisionedThroughputExceededException;

    use super::*;

    const CALL: Call<'static> = Call { action: "dynamodb:UpdateItem", table: "orders" };

    fn response(status: u16) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), "".into())
    }

    fn service_error(error: UpdateItemError, status: u16) -> SdkError<UpdateItemError, HttpResponse> {
        SdkError::service_error(error, response(status))
    }

    fn generic(code: &str, status: u16) -> SdkError<UpdateItemError, HttpResponse> {
        service_error(
            UpdateItemError::generic(ErrorMetadata::builder().code(code).message("m").build()),
            status,
        )
    }

    #[test]
    fn throttling_is_mapped_to_a_retryable_error() {
        let typed = UpdateItemError::ProvisionedThroughputExceededException(
            ProvisionedThroughputExceededException::builder()
                .message("Rate exceeded")
                .meta(ErrorMetadata::builder().code("ProvisionedThroughputExceededException").build())
                .build(),
        );
        let error = from_sdk_error(&service_error(typed, 400), CALL);
        assert!(
            matches!(&error, LedgerError::Throttled(m) if m.contains("ProvisionedThroughputExceeded")),
            "{error:?}"
        );
        assert!(error.is_retryable());
        for code in [
            "ThrottlingException",
            "RequestLimitExceeded",
            "com.amazonaws.dynamodb.v20120810#ThrottlingException",
        ] {
            let error = from_sdk_error(&generic(code, 400), CALL);
            assert!(matches!(error, LedgerError::Throttled(_)), "{code}: {error:?}");
        }
    }

    #[test]
    fn server_errors_and_timeouts_are_unavailable() {
        for (code, status) in [("InternalServerError", 500), ("ServiceUnavailable", 503), ("Whatever", 502)] {
            let error = from_sdk_error(&generic(code, status), CALL);
            assert!(matches!(error, LedgerError::Unavailable(_)), "{code}: {error:?}");
        }
        let timeout: SdkError<UpdateItemError, HttpResponse> = SdkError::timeout_error("attempt timed out");
        let error = from_sdk_error(&timeout, CALL);
        assert!(matches!(error, LedgerError::Unavailable(_)) && error.is_retryable(), "{error:?}");
    }

    #[test]
    fn missing_tables_and_bad_requests_are_fatal_and_say_what_to_check() {
        let error = from_sdk_error(&generic("ResourceNotFoundException", 400), CALL);
        let LedgerError::Fatal { code, message } = &error else { panic!("{error:?}") };
        assert_eq!(code, "ResourceNotFoundException");
        assert!(message.contains("orders") && message.contains("AWS_ENDPOINT_URL"), "{message}");
        assert!(!error.is_retryable());
        let error = from_sdk_error(&generic("AccessDeniedException", 400), CALL);
        assert!(
            matches!(&error, LedgerError::Fatal { message, .. } if message.contains("dynamodb:UpdateItem"))
        );
        assert!(matches!(
            from_sdk_error(&generic("ValidationException", 400), CALL),
            LedgerError::Fatal { .. }
        ));
    }

    fn sample() -> OrderRecord {
        let accepted_at = DateTime::parse_from_rfc3339("2026-12-01T10:00:00.123456789Z").unwrap().to_utc();
        OrderRecord {
            order_id: Uuid::now_v7(),
            customer_id: 42,
            total: Money::from_cents(10_028),
            item_count: 3,
            status: OrderStatus::Processing,
            accepted_at,
            updated_at: accepted_at + chrono::Duration::milliseconds(5),
            attempts: 2,
            charges: 1,
            payment_outcome: Some(PaymentOutcome::Approved),
            payment_reference: Some("pay_1".into()),
            last_error: Some("gateway timeout".into()),
            worker: Some("w-1".into()),
            lease_expires_at: Some(DateTime::from_timestamp_millis(1_796_000_000_123).unwrap()),
            expires_at: DateTime::from_timestamp(1_796_600_000, 0).unwrap(),
        }
    }

    #[test]
    fn items_round_trip_with_the_documented_attributes() {
        let record = sample();
        let item = to_item(&record);
        assert_eq!(item[TOTAL], s("100.28"));
        assert_eq!(item[STATUS], s("processing"));
        assert_eq!(item[LEASE_EXPIRES_AT], n(1_796_000_000_123_i64));
        assert_eq!(item[EXPIRES_AT], n(1_796_600_000));
        assert_eq!(item[ACCEPTED_AT], s("2026-12-01T10:00:00.123456789Z"));
        assert_eq!(from_item(&item), Ok(record.clone()));

        let bare = OrderRecord {
            payment_outcome: None,
            payment_reference: None,
            last_error: None,
            worker: None,
            lease_expires_at: None,
            ..record
        };
        let item = to_item(&bare);
        assert_eq!(item.len(), 10, "absent optional fields are absent attributes: {item:?}");
        assert_eq!(from_item(&item), Ok(bare));
    }

    #[test]
    fn unreadable_items_are_corrupt() {
        let mut item = to_item(&sample());
        item.insert(STATUS.into(), s("lost"));
        assert!(matches!(from_item(&item), Err(LedgerError::Corrupt(m)) if m.contains("status")));
        let mut item = to_item(&sample());
        item.remove(ATTEMPTS);
        assert!(matches!(from_item(&item), Err(LedgerError::Corrupt(m)) if m.contains("attempts")));
        let mut item = to_item(&sample());
        item.insert(CHARGES.into(), s("1"));
        assert!(matches!(from_item(&item), Err(LedgerError::Corrupt(_))));
    }

    #[test]
    fn names_are_derived_from_the_expressions() {
        let names = attribute_names(&["SET #status = :s, #a_b = if_not_exists(#a_b, :z)", "#x <= :n"]);
        let expected: HashMap<String, String> =
            [("#status", "status"), ("#a_b", "a_b"), ("#x", "x")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(names, expected);
    }
}
