//! The DynamoDB adapter against moto server (a real third-party DynamoDB implementation) through the real
//! SDK.
//!
//! Run with `scripts/test.sh` (it starts moto and sets `MOTO_ENDPOINT`). Tests run in parallel against one
//! moto, so each creates its own uniquely named table. Every rule is tested one request at a time: moto does
//! not make a conditional write atomic under concurrency, so races are tested on the embedded adapter.

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use chrono::{DateTime, Utc};
use ledger::dynamodb::{DynamoLedger, create_table};
use ledger::embedded::EmbeddedLedger;
use ledger::{
    ChargeRecord, Claim, ClaimRequest, DEFAULT_RETENTION, Ledger, LedgerError, NewOrder, OrderRecord,
    PaymentRecord, Settle, Settlement,
};
use orders::{Money, OrderStatus, PaymentOutcome};
use uuid::Uuid;

const NEEDS_MOTO: &str = "MOTO_ENDPOINT is not set: these tests need a moto server; run scripts/test.sh";

/// A lease that outlasts any test.
const LONG_LEASE: Duration = Duration::from_secs(300);

async fn moto() -> SdkConfig {
    let endpoint = std::env::var("MOTO_ENDPOINT").expect(NEEDS_MOTO);
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "ledger-tests"))
        .load()
        .await
}

/// A table name no other test (or earlier run against the same moto) uses.
fn unique(test: &str) -> String {
    format!("ledger-{test}-{}", Uuid::new_v4().simple())
}

/// A fresh table and a ledger on it, with the default retention.
async fn ledger(test: &str) -> (SdkConfig, DynamoLedger) {
    let config = moto().await;
    let table = unique(test);
    create_table(&config, &table).await.expect("creating the table on moto");
    let ledger = DynamoLedger::new(&config, table, DEFAULT_RETENTION);
    (config, ledger)
}

fn new_order() -> NewOrder {
    NewOrder {
        order_id: Uuid::now_v7(),
        customer_id: 42,
        total: Money::from_cents(10_028),
        item_count: 3,
        accepted_at: Utc::now() - chrono::Duration::milliseconds(250),
    }
}

fn claim_by(order: &NewOrder, worker: &str, lease: Duration) -> ClaimRequest {
    ClaimRequest { order: order.clone(), worker: worker.into(), lease }
}

fn approved(reference: &str) -> PaymentRecord {
    PaymentRecord { outcome: PaymentOutcome::Approved, reference: reference.into() }
}

async fn won(ledger: &impl Ledger, request: &ClaimRequest) -> (u32, OrderRecord) {
    match ledger.claim(request).await.expect("claim") {
        Claim::Won { token, record } => (token, record),
        other => panic!("expected to win the claim: {other:?}"),
    }
}

async fn get(ledger: &impl Ledger, order_id: Uuid) -> OrderRecord {
    ledger.get(order_id).await.expect("get").expect("the record exists")
}

/// Lets a lease of `Duration::ZERO` lapse: conditions compare milliseconds.
async fn past_the_lease() {
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn create_writes_a_pending_record_once() {
    let (_, ledger) = ledger("create").await;
    let order = new_order();
    assert!(ledger.create(&order).await.unwrap());
    let record = get(&ledger, order.order_id).await;
    assert_eq!(
        (record.order_id, record.customer_id, record.total, record.item_count, record.accepted_at),
        (order.order_id, order.customer_id, order.total, order.item_count, order.accepted_at)
    );
    assert_eq!((record.status, record.attempts, record.charges), (OrderStatus::Pending, 0, 0));
    assert_eq!((record.worker.as_deref(), record.lease_expires_at, record.payment()), (None, None, None));
    assert!(record.expires_at > Utc::now() + chrono::Duration::days(6), "{:?}", record.expires_at);

    let again = NewOrder { customer_id: 7, ..order.clone() };
    assert!(!ledger.create(&again).await.unwrap(), "a second create finds the record");
    assert_eq!(get(&ledger, order.order_id).await.customer_id, 42, "and leaves it unchanged");
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn get_of_a_missing_id_is_none() {
    let (_, ledger) = ledger("missing").await;
    assert_eq!(ledger.get(Uuid::now_v7()).await, Ok(None));
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn a_missing_table_is_a_fatal_error_naming_it() {
    let ledger = DynamoLedger::new(&moto().await, unique("absent"), DEFAULT_RETENTION);
    let error = ledger.get(Uuid::now_v7()).await.unwrap_err();
    let LedgerError::Fatal { code, message } = &error else { panic!("{error:?}") };
    assert_eq!(code, "ResourceNotFoundException");
    assert!(message.contains(ledger.table()), "{message}");
    assert!(!error.is_retryable());
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn claim_wins_a_pending_order_and_is_busy_while_the_lease_holds() {
    let (_, ledger) = ledger("claim").await;
    let order = new_order();
    ledger.create(&order).await.unwrap();

    let before = Utc::now();
    let (token, record) = won(&ledger, &claim_by(&order, "w1", LONG_LEASE)).await;
    assert_eq!(token, 1);
    assert_eq!((record.status, record.attempts, record.charges), (OrderStatus::Processing, 1, 0));
    assert_eq!(record.worker.as_deref(), Some("w1"));
    let lease = record.lease_expires_at.expect("a processing record has a lease");
    assert!(lease >= before + chrono::Duration::seconds(299), "{lease:?}");
    assert_eq!(get(&ledger, order.order_id).await, record, "get reads the claim back");

    match ledger.claim(&claim_by(&order, "w2", LONG_LEASE)).await.unwrap() {
        Claim::Busy(busy) => assert_eq!((busy.worker.as_deref(), busy.attempts), (Some("w1"), 1)),
        other => panic!("expected busy: {other:?}"),
    }
    assert_eq!(get(&ledger, order.order_id).await, record, "a lost claim changes nothing");
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn a_lapsed_lease_is_claimed_again_under_the_next_token() {
    let (_, ledger) = ledger("lapsed").await;
    let order = new_order();
    ledger.create(&order).await.unwrap();
    let (first, _) = won(&ledger, &claim_by(&order, "w1", Duration::ZERO)).await;
    past_the_lease().await;
    let (second, record) = won(&ledger, &claim_by(&order, "w2", LONG_LEASE)).await;
    assert_eq!((first, second), (1, 2));
    assert_eq!((record.attempts, record.worker.as_deref()), (2, Some("w2")));

    // The first owner's token is stale now.
    let fenced = ledger.settle(order.order_id, first, "w1", &Settlement::Completed).await.unwrap();
    let Settle::Fenced(Some(current)) = fenced else { panic!("expected fenced: {fenced:?}") };
    assert_eq!((current.status, current.attempts), (OrderStatus::Processing, 2));
    assert_eq!(get(&ledger, order.order_id).await.status, OrderStatus::Processing);
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn claim_of_an_order_with_no_record_creates_it_from_the_message() {
    let (_, ledger) = ledger("norecord").await;
    let order = new_order();
    let (token, record) = won(&ledger, &claim_by(&order, "w1", LONG_LEASE)).await;
    assert_eq!(token, 1);
    assert_eq!(
        (record.order_id, record.customer_id, record.total, record.item_count, record.accepted_at),
        (order.order_id, 42, Money::from_cents(10_028), 3, order.accepted_at)
    );
    assert_eq!((record.status, record.attempts, record.charges), (OrderStatus::Processing, 1, 0));
    assert!(!ledger.create(&order).await.unwrap(), "the receiver's late create finds it");
    assert_eq!(get(&ledger, order.order_id).await.status, OrderStatus::Processing);
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn settle_takes_the_latest_token_once_and_the_order_stays_settled() {
    let (_, ledger) = ledger("settle").await;
    let order = new_order();
    ledger.create(&order).await.unwrap();
    let (token, _) = won(&ledger, &claim_by(&order, "w1", LONG_LEASE)).await;

    let wrong = ledger.settle(order.order_id, token + 1, "w1", &Settlement::Completed).await.unwrap();
    assert!(matches!(&wrong, Settle::Fenced(Some(r)) if r.status == OrderStatus::Processing), "{wrong:?}");

    let settled = ledger.settle(order.order_id, token, "w1", &Settlement::Completed).await.unwrap();
    let Settle::Settled(record) = settled else { panic!("expected settled: {settled:?}") };
    assert_eq!(
        (record.status, record.worker.as_deref(), record.lease_expires_at),
        (OrderStatus::Completed, Some("w1"), None)
    );

    let twice = ledger.settle(order.order_id, token, "w1", &Settlement::Declined).await.unwrap();
    assert_eq!(twice, Settle::Fenced(Some(record.clone())), "a second settle changes nothing");

    match ledger.claim(&claim_by(&order, "w2", LONG_LEASE)).await.unwrap() {
        Claim::Settled(settled) => assert_eq!(settled, record),
        other => panic!("expected settled: {other:?}"),
    }
    assert_eq!(get(&ledger, order.order_id).await, record);
    assert_eq!(
        ledger.settle(Uuid::now_v7(), 1, "w1", &Settlement::Completed).await,
        Ok(Settle::Fenced(None))
    );
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn a_failed_settlement_keeps_the_reason() {
    let (_, ledger) = ledger("failed").await;
    let order = new_order();
    let (token, _) = won(&ledger, &claim_by(&order, "w1", LONG_LEASE)).await;
    let settled =
        ledger.settle(order.order_id, token, "w1", &Settlement::Failed("gave up".into())).await.unwrap();
    let Settle::Settled(record) = settled else { panic!("{settled:?}") };
    assert_eq!((record.status, record.last_error.as_deref()), (OrderStatus::Failed, Some("gave up")));
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn release_ends_the_lease_of_the_latest_claim_only() {
    let (_, ledger) = ledger("release").await;
    let order = new_order();
    let (token, _) = won(&ledger, &claim_by(&order, "w1", LONG_LEASE)).await;
    assert_eq!(ledger.release(order.order_id, token + 1, "wrong token").await, Ok(false));
    assert!(matches!(ledger.claim(&claim_by(&order, "w2", LONG_LEASE)).await, Ok(Claim::Busy(_))));

    let before = Utc::now();
    assert_eq!(ledger.release(order.order_id, token, "gateway timeout").await, Ok(true));
    let record = get(&ledger, order.order_id).await;
    assert_eq!(
        (record.status, record.last_error.as_deref()),
        (OrderStatus::Processing, Some("gateway timeout"))
    );
    let lease = record.lease_expires_at.expect("still a lease");
    assert!(lease >= before - chrono::Duration::milliseconds(1) && lease <= Utc::now(), "{lease:?}");

    past_the_lease().await;
    let (next, _) = won(&ledger, &claim_by(&order, "w2", LONG_LEASE)).await;
    assert_eq!(next, token + 1, "the next delivery claims it at once");
    assert_eq!(ledger.release(order.order_id, token, "stale").await, Ok(false));
    assert_eq!(ledger.release(Uuid::now_v7(), 1, "no record").await, Ok(false));
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn the_first_charge_is_the_only_one() {
    let (_, ledger) = ledger("charge").await;
    let order = new_order();
    ledger.create(&order).await.unwrap();
    won(&ledger, &claim_by(&order, "w1", LONG_LEASE)).await;

    let first = ledger.record_charge(order.order_id, &approved("pay_first")).await.unwrap();
    let ChargeRecord::Recorded(record) = first else { panic!("{first:?}") };
    assert_eq!((record.charges, record.payment()), (1, Some(approved("pay_first"))));

    let second = ledger.record_charge(order.order_id, &approved("pay_second")).await.unwrap();
    assert_eq!(second, ChargeRecord::AlreadyRecorded(approved("pay_first")));
    let stored = get(&ledger, order.order_id).await;
    assert_eq!((stored.charges, stored.payment()), (1, Some(approved("pay_first"))));
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn a_declined_charge_is_recorded_without_counting_a_charge() {
    let (_, ledger) = ledger("declined").await;
    let order = new_order();
    ledger.create(&order).await.unwrap();
    let declined = PaymentRecord { outcome: PaymentOutcome::Declined, reference: "pay_no".into() };
    let answer = ledger.record_charge(order.order_id, &declined).await.unwrap();
    assert!(matches!(&answer, ChargeRecord::Recorded(r) if r.charges == 0), "{answer:?}");
    let stored = get(&ledger, order.order_id).await;
    assert_eq!((stored.charges, stored.payment()), (0, Some(declined.clone())));
    let again = ledger.record_charge(order.order_id, &approved("pay_late")).await.unwrap();
    assert_eq!(again, ChargeRecord::AlreadyRecorded(declined));
    assert_eq!(get(&ledger, order.order_id).await.charges, 0);
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn a_charge_for_an_order_with_no_record_is_rejected() {
    let (_, ledger) = ledger("nocharge").await;
    let order_id = Uuid::now_v7();
    let error = ledger.record_charge(order_id, &approved("pay_x")).await.unwrap_err();
    assert!(matches!(error, LedgerError::Rejected(_)), "{error:?}");
    assert_eq!(ledger.get(order_id).await, Ok(None), "nothing was written");
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn abandon_fails_a_pending_order_once() {
    let (_, ledger) = ledger("abandon").await;
    let order = new_order();
    ledger.create(&order).await.unwrap();
    assert_eq!(ledger.abandon(order.order_id, "publish failed").await, Ok(true));
    let record = get(&ledger, order.order_id).await;
    assert_eq!((record.status, record.last_error.as_deref()), (OrderStatus::Failed, Some("publish failed")));
    assert_eq!(ledger.abandon(order.order_id, "again").await, Ok(false));
    assert_eq!(get(&ledger, order.order_id).await.last_error.as_deref(), Some("publish failed"));

    // A worker that got the order first keeps it.
    let claimed = new_order();
    won(&ledger, &claim_by(&claimed, "w1", LONG_LEASE)).await;
    assert_eq!(ledger.abandon(claimed.order_id, "publish failed").await, Ok(false));
    assert_eq!(get(&ledger, claimed.order_id).await.status, OrderStatus::Processing);
    assert_eq!(ledger.abandon(Uuid::now_v7(), "no record").await, Ok(false));
    assert_eq!(get(&ledger, claimed.order_id).await.status, OrderStatus::Processing);
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn an_expired_item_reads_as_no_record() {
    let (config, ledger) = ledger("expired").await;
    // Retention zero: every write is past its expiry at once, as if DynamoDB's TTL had not caught up yet.
    let expired = DynamoLedger::new(&config, ledger.table(), Duration::ZERO);
    let order = new_order();
    assert!(expired.create(&order).await.unwrap());
    let item = aws_sdk_dynamodb::Client::new(&config)
        .get_item()
        .table_name(ledger.table())
        .key("order_id", AttributeValue::S(order.order_id.to_string()))
        .send()
        .await
        .unwrap()
        .item
        .expect("moto keeps expired items, like DynamoDB for a while");
    assert_eq!(item["status"], AttributeValue::S("pending".into()));

    assert_eq!(ledger.get(order.order_id).await, Ok(None));
    assert!(matches!(
        ledger.record_charge(order.order_id, &approved("p")).await,
        Err(LedgerError::Rejected(_))
    ));
    assert_eq!(ledger.abandon(order.order_id, "x").await, Ok(false));
    assert!(ledger.create(&order).await.unwrap(), "a create replaces an expired item");
    assert_eq!(get(&ledger, order.order_id).await.status, OrderStatus::Pending);
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn a_claim_of_an_expired_settled_item_starts_a_new_record() {
    let (config, ledger) = ledger("reborn").await;
    let order = new_order();
    let (token, _) = won(&ledger, &claim_by(&order, "w1", LONG_LEASE)).await;
    ledger.record_charge(order.order_id, &approved("pay_old")).await.unwrap();
    ledger.settle(order.order_id, token, "w1", &Settlement::Completed).await.unwrap();
    // Age the item past its expiry behind the ledger's back.
    let past = (Utc::now() - chrono::Duration::hours(1)).timestamp();
    aws_sdk_dynamodb::Client::new(&config)
        .update_item()
        .table_name(ledger.table())
        .key("order_id", AttributeValue::S(order.order_id.to_string()))
        .update_expression("SET expires_at = :past")
        .expression_attribute_values(":past", AttributeValue::N(past.to_string()))
        .send()
        .await
        .unwrap();
    assert_eq!(ledger.get(order.order_id).await, Ok(None));

    // As on the embedded adapter: no record, so the claim creates one (the message is a new order).
    let (token, record) = won(&ledger, &claim_by(&order, "w2", LONG_LEASE)).await;
    assert_eq!(token, 1);
    assert_eq!(
        (record.status, record.attempts, record.charges, record.payment()),
        (OrderStatus::Processing, 1, 0, None)
    );
    assert_eq!(get(&ledger, order.order_id).await, record);
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn create_table_enables_ttl_and_is_idempotent() {
    let config = moto().await;
    let table = unique("table");
    create_table(&config, &table).await.expect("create");
    create_table(&config, &table).await.expect("an existing table is fine");
    let client = aws_sdk_dynamodb::Client::new(&config);
    let ttl = client.describe_time_to_live().table_name(&table).send().await.unwrap();
    let ttl = ttl.time_to_live_description().expect("a TTL description");
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
    assert!(
        matches!(ttl.time_to_live_status(), Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)),
        "{ttl:?}"
    );
    let described = client.describe_table().table_name(&table).send().await.unwrap();
    let key = described.table().unwrap().key_schema();
    assert_eq!((key.len(), key[0].attribute_name()), (1, "order_id"));
    assert!(ledger::dynamodb::delete_table(&config, &table).await.unwrap());
    assert!(!ledger::dynamodb::delete_table(&config, &table).await.unwrap(), "deleting twice is fine");
}

type Essentials = (
    (Uuid, u64, Money, u32, DateTime<Utc>),
    (OrderStatus, u32, u32, Option<PaymentRecord>),
    (Option<String>, Option<String>, bool),
);

/// The fields a port call's answer is judged by, without the timestamps the two adapters take separately.
fn essentials(record: &OrderRecord) -> Essentials {
    (
        (record.order_id, record.customer_id, record.total, record.item_count, record.accepted_at),
        (record.status, record.attempts, record.charges, record.payment()),
        (record.worker.clone(), record.last_error.clone(), record.lease_expires_at.is_some()),
    )
}

/// What a sequence of calls answered, reduced to what must match between adapters.
#[derive(Debug, PartialEq)]
enum Answer {
    Created(bool),
    Claim(&'static str, Option<u32>, Essentials),
    Charge(Result<Option<PaymentRecord>, String>),
    Settle(&'static str, Option<Essentials>),
    Release(bool),
    Abandon(bool),
}

/// One life of two orders through every call, answered by `ledger`; then each record as `get` reads it.
async fn script(ledger: &impl Ledger, orders: &[NewOrder; 2]) -> (Vec<Answer>, Vec<Option<Essentials>>) {
    let [a, b] = orders;
    let mut answers = Vec::new();
    let claim = |answer: Claim| match answer {
        Claim::Won { token, record } => Answer::Claim("won", Some(token), essentials(&record)),
        Claim::Busy(record) => Answer::Claim("busy", None, essentials(&record)),
        Claim::Settled(record) => Answer::Claim("settled", None, essentials(&record)),
    };
    let settle = |answer: Settle| match answer {
        Settle::Settled(record) => Answer::Settle("settled", Some(essentials(&record))),
        Settle::Fenced(record) => Answer::Settle("fenced", record.as_ref().map(essentials)),
    };
    let charge = |answer: Result<ChargeRecord, LedgerError>| {
        Answer::Charge(match answer {
            Ok(ChargeRecord::Recorded(record)) => Ok(record.payment()),
            Ok(ChargeRecord::AlreadyRecorded(first)) => Ok(Some(first)),
            Err(error) => Err(format!("{error:?}").split('(').next().unwrap().to_owned()),
        })
    };

    answers.push(Answer::Created(ledger.create(a).await.unwrap()));
    answers.push(claim(ledger.claim(&claim_by(a, "w1", Duration::ZERO)).await.unwrap()));
    past_the_lease().await;
    answers.push(claim(ledger.claim(&claim_by(a, "w2", LONG_LEASE)).await.unwrap()));
    answers.push(claim(ledger.claim(&claim_by(a, "w3", LONG_LEASE)).await.unwrap()));
    answers.push(settle(ledger.settle(a.order_id, 1, "w1", &Settlement::Completed).await.unwrap()));
    answers.push(Answer::Release(ledger.release(a.order_id, 1, "stale").await.unwrap()));
    answers.push(charge(ledger.record_charge(a.order_id, &approved("pay_a")).await));
    answers.push(charge(ledger.record_charge(a.order_id, &approved("pay_again")).await));
    answers.push(settle(ledger.settle(a.order_id, 2, "w2", &Settlement::Completed).await.unwrap()));
    answers.push(settle(ledger.settle(a.order_id, 2, "w2", &Settlement::Completed).await.unwrap()));
    answers.push(claim(ledger.claim(&claim_by(a, "w4", LONG_LEASE)).await.unwrap()));
    answers.push(Answer::Abandon(ledger.abandon(a.order_id, "late").await.unwrap()));

    answers.push(charge(ledger.record_charge(b.order_id, &approved("pay_b")).await));
    answers.push(claim(ledger.claim(&claim_by(b, "w1", LONG_LEASE)).await.unwrap()));
    answers.push(Answer::Created(ledger.create(b).await.unwrap()));
    answers.push(Answer::Release(ledger.release(b.order_id, 1, "gateway timeout").await.unwrap()));
    past_the_lease().await;
    answers.push(claim(ledger.claim(&claim_by(b, "w2", LONG_LEASE)).await.unwrap()));
    answers.push(settle(ledger.settle(b.order_id, 1, "w1", &Settlement::Completed).await.unwrap()));
    answers.push(settle(
        ledger.settle(b.order_id, 2, "w2", &Settlement::Failed("gateway down".into())).await.unwrap(),
    ));
    answers.push(Answer::Abandon(ledger.abandon(b.order_id, "publish failed").await.unwrap()));
    // The failed order's message is redriven from the dead-letter queue: claimed again, under a new token.
    answers.push(claim(ledger.claim(&claim_by(b, "w3", LONG_LEASE)).await.unwrap()));

    let mut records = Vec::new();
    for order in orders {
        records.push(ledger.get(order.order_id).await.unwrap().as_ref().map(essentials));
    }
    records.push(ledger.get(Uuid::now_v7()).await.unwrap().as_ref().map(essentials));
    (answers, records)
}

#[tokio::test]
#[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
async fn answers_and_records_match_the_embedded_adapter() {
    let (_, dynamo) = ledger("parity").await;
    let embedded = EmbeddedLedger::new(DEFAULT_RETENTION);
    let orders = [new_order(), new_order()];
    let (dynamo_answers, dynamo_records) = script(&dynamo, &orders).await;
    let (embedded_answers, embedded_records) = script(&embedded, &orders).await;
    assert_eq!(dynamo_answers, embedded_answers);
    assert_eq!(dynamo_records, embedded_records);
    // Sanity: the script went where it was meant to.
    let final_a = get(&dynamo, orders[0].order_id).await;
    assert_eq!(
        (final_a.status, final_a.attempts, final_a.charges, final_a.worker.as_deref()),
        (OrderStatus::Completed, 2, 1, Some("w2"))
    );
    let final_b = get(&dynamo, orders[1].order_id).await;
    assert_eq!(
        (final_b.status, final_b.attempts, final_b.worker.as_deref(), final_b.last_error.as_deref()),
        (OrderStatus::Processing, 3, Some("w3"), Some("gateway down")),
        "failed, then redriven and claimed again"
    );
}

mod idempotency_keys {
    use ledger::idempotency::{IdempotencyKeys, KeyBegin, KeyRequest, StoredResponse};

    use super::*;

    fn request(key: &str, fingerprint: &str, lock: Duration) -> KeyRequest {
        KeyRequest {
            key: key.into(),
            fingerprint: fingerprint.into(),
            order_id: Uuid::now_v7(),
            lock,
            retention: Duration::from_secs(24 * 60 * 60),
        }
    }

    #[tokio::test]
    #[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
    async fn a_key_is_taken_once_then_replayed() {
        let (_, keys) = ledger("key-replay").await;
        let first = request("async:k1", "f", LONG_LEASE);
        assert_eq!(
            keys.begin(&first).await.unwrap(),
            KeyBegin::Proceed { order_id: first.order_id, resumed: false }
        );
        assert_eq!(keys.begin(&request("async:k1", "f", LONG_LEASE)).await.unwrap(), KeyBegin::InFlight);
        assert_eq!(keys.begin(&request("async:k1", "g", LONG_LEASE)).await.unwrap(), KeyBegin::Mismatch);
        let answer = StoredResponse { status: 202, body: r#"{"order_id":"x"}"#.into() };
        keys.complete("async:k1", &answer, Duration::from_secs(3600)).await.unwrap();
        assert_eq!(
            keys.begin(&request("async:k1", "f", LONG_LEASE)).await.unwrap(),
            KeyBegin::Replay(answer)
        );
        assert_eq!(keys.begin(&request("async:k1", "g", LONG_LEASE)).await.unwrap(), KeyBegin::Mismatch);
    }

    #[tokio::test]
    #[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
    async fn an_unlocked_or_lapsed_key_resumes_with_its_order_id_and_a_forgotten_one_starts_afresh() {
        let (_, keys) = ledger("key-resume").await;
        let first = request("async:k2", "f", LONG_LEASE);
        keys.begin(&first).await.unwrap();
        keys.unlock("async:k2").await.unwrap();
        let resumed = keys.begin(&request("async:k2", "f", Duration::from_millis(1))).await.unwrap();
        assert_eq!(resumed, KeyBegin::Proceed { order_id: first.order_id, resumed: true });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let lapsed = keys.begin(&request("async:k2", "f", LONG_LEASE)).await.unwrap();
        assert_eq!(lapsed, KeyBegin::Proceed { order_id: first.order_id, resumed: true }, "the lock lapsed");
        keys.forget("async:k2").await.unwrap();
        let fresh = request("async:k2", "other", LONG_LEASE);
        assert_eq!(
            keys.begin(&fresh).await.unwrap(),
            KeyBegin::Proceed { order_id: fresh.order_id, resumed: false }
        );
    }
}

mod worker_registry {
    use ledger::dynamodb::REGISTRY_KEY;
    use ledger::registry::WorkerEntry;

    use super::*;
    use crate::embedded_registry::entry;

    /// Entries are written with whole-millisecond times, as the table keeps them.
    fn now_ms() -> DateTime<Utc> {
        DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap()
    }

    /// The attribute names of the registry's item, as stored.
    async fn stored_entries(config: &SdkConfig, ledger: &DynamoLedger) -> Vec<String> {
        let item = aws_sdk_dynamodb::Client::new(config)
            .get_item()
            .table_name(ledger.table())
            .key("order_id", AttributeValue::S(REGISTRY_KEY.into()))
            .send()
            .await
            .unwrap()
            .item
            .unwrap_or_default();
        let mut names: Vec<String> = item.into_keys().filter(|name| name.starts_with("worker#")).collect();
        names.sort();
        names
    }

    #[tokio::test]
    #[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
    async fn heartbeats_replace_an_entry_and_the_fleet_holds_only_live_ones() {
        let (config, ledger) = ledger("registry").await;
        let registry = ledger.registry().expect("the DynamoDB ledger serves the registry");
        let now = now_ms();
        assert_eq!(registry.fleet(now).await.unwrap(), vec![], "no item yet");

        let order = new_order();
        ledger.create(&order).await.unwrap();
        registry.heartbeat(&entry("w1", now, 1)).await.unwrap();
        let beat = WorkerEntry { breaker: Some("open".into()), ..entry("w1", now, 9) };
        registry.heartbeat(&beat).await.unwrap();
        // Seen 14 s ago with a 15 s timeout: live for one more second.
        let old = entry("w3", now - chrono::Duration::seconds(14), 5);
        registry.heartbeat(&old).await.unwrap();

        let mut fleet = registry.fleet(now).await.unwrap();
        fleet.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        assert_eq!(fleet, vec![beat.clone(), old], "the orders' items are not in the fleet");
        let later = now + chrono::Duration::seconds(2);
        assert_eq!(registry.fleet(later).await.unwrap(), vec![beat.clone()], "w3 timed out");

        registry.heartbeat(&beat.departed(later)).await.unwrap();
        assert_eq!(registry.fleet(later).await.unwrap(), vec![], "a departed worker is gone at once");
        assert_eq!(stored_entries(&config, &ledger).await, Vec::<String>::new(), "and w3's entry removed");
        assert_eq!(get(&ledger, order.order_id).await.status, OrderStatus::Pending, "orders untouched");
    }

    #[tokio::test]
    #[ignore = "needs moto: set MOTO_ENDPOINT (scripts/test.sh starts it)"]
    async fn a_heartbeat_removes_the_entries_of_workers_gone_silent() {
        let (config, ledger) = ledger("registry-prune").await;
        let registry = ledger.registry().unwrap();
        let now = now_ms();
        // A worker last seen 18 s ago (timeout 15 s: it crashed) and one seen 5 s ago.
        registry.heartbeat(&entry("crashed", now - chrono::Duration::seconds(18), 3)).await.unwrap();
        registry.heartbeat(&entry("w2", now - chrono::Duration::seconds(5), 3)).await.unwrap();
        assert_eq!(stored_entries(&config, &ledger).await, ["worker#crashed", "worker#w2"]);

        registry.heartbeat(&entry("w1", now, 1)).await.unwrap();
        assert_eq!(stored_entries(&config, &ledger).await, ["worker#w1", "worker#w2"]);
        let mut live: Vec<String> =
            registry.fleet(now).await.unwrap().into_iter().map(|entry| entry.worker_id).collect();
        live.sort();
        assert_eq!(live, ["w1", "w2"]);
    }
}
