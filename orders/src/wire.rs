//! The message that travels on the bus, and its parser.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Order;

/// The wire schema version this code writes and reads. Bump it for any incompatible change; consumers reject
/// versions they do not know rather than guess.
pub const WIRE_VERSION: u32 = 1;

/// What the receiver publishes for each accepted order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireMessage {
    /// Schema version, always [`WIRE_VERSION`] when written by this code.
    pub v: u32,
    /// The order as accepted.
    pub order: Order,
    /// When the receiver acknowledged the order to its client; the worker and the load tool measure end-to-end
    /// latency from here.
    pub accepted_at: DateTime<Utc>,
}

/// Why a message body is not a [`WireMessage`]. Such a message is poison: retrying cannot fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The body is not JSON.
    #[error("body is not JSON: {0}")]
    NotJson(String),
    /// An SNS envelope of another type (e.g. `SubscriptionConfirmation`), or one without a string `Message`.
    #[error("SNS envelope is not a notification carrying a message: {0}")]
    NotANotification(String),
    /// A version this code does not read.
    #[error("unsupported wire version {0} (this build reads version {WIRE_VERSION})")]
    UnsupportedVersion(u64),
    /// JSON, but not the shape of a wire message, or an order that does not add up.
    #[error("not an order message: {0}")]
    Invalid(String),
}

impl WireMessage {
    /// Wraps an accepted order for the bus.
    pub fn new(order: Order, accepted_at: DateTime<Utc>) -> Self {
        Self { v: WIRE_VERSION, order, accepted_at }
    }

    /// The JSON body to publish.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a wire message always serializes: plain fields, string keys")
    }

    /// Parses a body as delivered by SQS: the raw message (raw delivery) or the SNS JSON envelope around it
    /// (`{"Type":"Notification","Message":"<json string>",...}`). Anything else is a described error.
    pub fn parse(body: &str) -> Result<Self, WireError> {
        // The common case, a raw current-version message, straight into the struct: half the cost of going
        // through a `Value` (the worker's hot path). Anything else takes the general path, which also writes
        // the descriptive errors.
        if let Ok(message) = serde_json::from_str::<Self>(body)
            && message.v == WIRE_VERSION
        {
            return message.checked();
        }
        let value: Value = serde_json::from_str(body).map_err(|e| WireError::NotJson(e.to_string()))?;
        match value.get("Type") {
            Some(kind) => {
                let message = match (kind.as_str(), value.get("Message").and_then(Value::as_str)) {
                    (Some("Notification"), Some(message)) => message,
                    _ => return Err(WireError::NotANotification(format!("Type {kind}"))),
                };
                let inner: Value =
                    serde_json::from_str(message).map_err(|e| WireError::NotJson(e.to_string()))?;
                Self::from_value(inner)
            }
            None => Self::from_value(value),
        }
    }

    fn from_value(value: Value) -> Result<Self, WireError> {
        match value.get("v").map(Value::as_u64) {
            None => return Err(WireError::Invalid("missing field `v`".into())),
            Some(Some(v)) if v == u64::from(WIRE_VERSION) => {}
            Some(Some(v)) => return Err(WireError::UnsupportedVersion(v)),
            Some(None) => return Err(WireError::Invalid("`v` must be an unsigned integer".into())),
        }
        let message: Self = serde_json::from_value(value).map_err(|e| WireError::Invalid(e.to_string()))?;
        message.checked()
    }

    /// What the types cannot say: an order has items, and its total is theirs.
    fn checked(self) -> Result<Self, WireError> {
        let order = &self.order;
        if order.items.is_empty() {
            return Err(WireError::Invalid("order has no items".into()));
        }
        if crate::order::total_of(&order.items) != Some(order.total) {
            return Err(WireError::Invalid(format!("order total {} does not match its items", order.total)));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Money, OrderRequest};

    fn message() -> WireMessage {
        let request = OrderRequest::from_json(
            br#"{"customer_id": 1234, "items": [{"product_id": "PROD-001", "quantity": 2, "price": 49.99}]}"#,
        )
        .unwrap();
        WireMessage::new(Order::new(request), Utc::now())
    }

    fn envelope(message: &str) -> String {
        serde_json::json!({
            "Type": "Notification",
            "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:orders",
            "Message": message,
            "Timestamp": "2026-11-23T12:00:00.000Z",
            "SignatureVersion": "1",
            "MessageAttributes": {"schema_version": {"Type": "String", "Value": "1"}}
        })
        .to_string()
    }

    #[test]
    fn round_trips_raw_and_enveloped() {
        let original = message();
        let json = original.to_json();
        assert!(
            json.contains(r#""v":1"#)
                && json.contains(r#""price":"49.99""#)
                && json.contains(r#""total":"99.98""#)
        );
        assert_eq!(WireMessage::parse(&json), Ok(original.clone()));
        assert_eq!(WireMessage::parse(&envelope(&json)), Ok(original));
    }

    #[test]
    fn rejects_everything_else_clearly() {
        let good = message();
        let mut wrong_total = good.clone();
        wrong_total.order.total = Money::from_cents(1);
        let mut v2 = serde_json::to_value(&good).unwrap();
        v2["v"] = 2.into();
        let mut extra = serde_json::to_value(&good).unwrap();
        extra["surprise"] = true.into();
        let confirmation = r#"{"Type":"SubscriptionConfirmation","Message":"confirm","Token":"t"}"#;

        assert!(matches!(WireMessage::parse("not json"), Err(WireError::NotJson(_))));
        assert!(matches!(WireMessage::parse(""), Err(WireError::NotJson(_))));
        assert!(matches!(WireMessage::parse(confirmation), Err(WireError::NotANotification(_))));
        assert!(matches!(WireMessage::parse(&envelope("garbage")), Err(WireError::NotJson(_))));
        assert_eq!(WireMessage::parse(&v2.to_string()), Err(WireError::UnsupportedVersion(2)));
        assert!(matches!(WireMessage::parse(&extra.to_string()), Err(WireError::Invalid(_))));
        assert!(matches!(WireMessage::parse(&wrong_total.to_json()), Err(WireError::Invalid(_))));
        assert!(matches!(WireMessage::parse(r#"{"order": {}}"#), Err(WireError::Invalid(_))));
        assert!(matches!(WireMessage::parse("[1,2]"), Err(WireError::Invalid(_))));
    }
}
