//! What a client posts, and the field-by-field validation that turns it into an [`OrderRequest`].
//!
//! The body is read field by field from the JSON text ([`serde_json::value::RawValue`]) rather than through a
//! derived struct, for two reasons: prices are parsed from their exact decimal text (never via `f64`), and every
//! failing field is reported at once with its path (`items[2].quantity`), not just the first one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Money;

/// The bounds the validation enforces, in one place so error messages, tests and docs agree.
pub mod limits {
    /// At least one item: an empty order is a client bug, not an order.
    pub const MIN_ITEMS: usize = 1;
    /// At most 100 items, which bounds the work and the message size of one order.
    pub const MAX_ITEMS: usize = 100;
    /// Product ids are short catalogue keys (`PROD-001`); 64 characters leaves room without allowing essays.
    pub const MAX_PRODUCT_ID_CHARS: usize = 64;
    /// Per-line quantity bounds: a flash sale sells units, not warehouses.
    pub const MIN_QUANTITY: u32 = 1;
    /// See [`MIN_QUANTITY`].
    pub const MAX_QUANTITY: u32 = 1000;
    /// One billion, in cents: beyond any real price, and small enough that
    /// `MAX_ITEMS × MAX_QUANTITY × MAX_PRICE_CENTS` cannot overflow an order total.
    pub const MAX_PRICE_CENTS: i64 = 100_000_000_000;
}

/// A validated order request: every field within [`limits`].
///
/// The JSON it comes from is the original lab's:
/// `{"customer_id": 1234, "items": [{"product_id": "PROD-001", "quantity": 2, "price": 49.99}]}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    /// The paying customer: a positive integer.
    pub customer_id: u64,
    /// What is bought: 1 to 100 lines.
    pub items: Vec<LineItem>,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineItem {
    /// Catalogue key, non-empty, at most 64 characters.
    pub product_id: String,
    /// Units, 1 to 1000.
    pub quantity: u32,
    /// Unit price, positive, exact to the cent.
    pub price: Money,
}

/// One failing field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Path of the field, e.g. `customer_id` or `items[0].price`; `body` for the body as a whole.
    pub field: String,
    /// What is wrong with it, readable by the person who sent it.
    pub message: String,
}

/// Why a request body is not an order request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON at all (HTTP 400).
    #[error("malformed JSON: {0}")]
    Malformed(String),
    /// JSON, but some fields are missing or out of bounds (HTTP 422); lists every one.
    #[error("invalid order: {}", .0.iter().map(|e| format!("{} {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
}

type Fields<'a> = BTreeMap<String, &'a RawValue>;

impl OrderRequest {
    /// Parses and validates a request body.
    pub fn from_json(body: &[u8]) -> Result<Self, RequestError> {
        let raw: &RawValue =
            serde_json::from_slice(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
        let mut errors = Errors::default();
        let Some(mut fields) = object(raw) else {
            errors.add("body", "must be a JSON object");
            return Err(errors.into_error());
        };
        let customer_id = fields.remove("customer_id");
        let items = fields.remove("items");
        for unknown in fields.keys() {
            errors.add(unknown, "is not a known field");
        }
        let customer_id = match customer_id {
            None => errors.missing("customer_id"),
            Some(raw) => match serde_json::from_str::<u64>(raw.get()) {
                Ok(id) if id > 0 => Some(id),
                _ => errors.reject("customer_id", "must be a positive integer"),
            },
        };
        let items = match items {
            None => errors.missing("items"),
            Some(raw) => parse_items(raw, &mut errors),
        };
        match (customer_id, items, errors.0.is_empty()) {
            (Some(customer_id), Some(items), true) => Ok(Self { customer_id, items }),
            _ => Err(errors.into_error()),
        }
    }
}

fn object(raw: &RawValue) -> Option<Fields<'_>> {
    serde_json::from_str(raw.get()).ok()
}

fn parse_items(raw: &RawValue, errors: &mut Errors) -> Option<Vec<LineItem>> {
    let Ok(entries) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        return errors.reject("items", "must be an array of items");
    };
    if !(limits::MIN_ITEMS..=limits::MAX_ITEMS).contains(&entries.len()) {
        errors.add(
            "items",
            format!("must have {} to {} items, not {}", limits::MIN_ITEMS, limits::MAX_ITEMS, entries.len()),
        );
    }
    let parsed: Vec<Option<LineItem>> =
        entries.iter().enumerate().map(|(index, raw)| parse_item(index, raw, errors)).collect();
    parsed.into_iter().collect()
}

fn parse_item(index: usize, raw: &RawValue, errors: &mut Errors) -> Option<LineItem> {
    let path = |field: &str| format!("items[{index}].{field}");
    let Some(mut fields) = object(raw) else {
        return errors.reject(format!("items[{index}]"), "must be an object");
    };
    let product_id = fields.remove("product_id");
    let quantity = fields.remove("quantity");
    let price = fields.remove("price");
    for unknown in fields.keys() {
        errors.add(path(unknown), "is not a known field");
    }
    let product_id = match product_id.map(|raw| serde_json::from_str::<String>(raw.get())) {
        None => errors.missing(path("product_id")),
        Some(Err(_)) => errors.reject(path("product_id"), "must be a string"),
        Some(Ok(id)) if id.trim().is_empty() => errors.reject(path("product_id"), "must not be empty"),
        Some(Ok(id)) if id.chars().count() > limits::MAX_PRODUCT_ID_CHARS => errors.reject(
            path("product_id"),
            format!("must be at most {} characters", limits::MAX_PRODUCT_ID_CHARS),
        ),
        Some(Ok(id)) if id.chars().any(is_unprintable) => errors.reject(
            path("product_id"),
            "must be printable text: no control characters, U+FFFE or U+FFFF (the message bus refuses them)",
        ),
        Some(Ok(id)) => Some(id),
    };
    let quantity = match quantity.map(|raw| serde_json::from_str::<i64>(raw.get())) {
        None => errors.missing(path("quantity")),
        Some(Ok(q)) if (i64::from(limits::MIN_QUANTITY)..=i64::from(limits::MAX_QUANTITY)).contains(&q) => {
            u32::try_from(q).ok()
        }
        Some(_) => errors.reject(
            path("quantity"),
            format!("must be an integer from {} to {}", limits::MIN_QUANTITY, limits::MAX_QUANTITY),
        ),
    };
    let price = match price {
        None => errors.missing(path("price")),
        Some(raw) => match parse_price(raw) {
            Ok(price) => Some(price),
            Err(message) => errors.reject(path("price"), message),
        },
    };
    Some(LineItem { product_id: product_id?, quantity: quantity?, price: price? })
}

fn parse_price(raw: &RawValue) -> Result<Money, String> {
    let text = raw.get();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return Err("must be a number".into());
    }
    let money = Money::parse_decimal(text).map_err(|e| e.to_string())?;
    if money.cents() <= 0 {
        return Err("must be greater than 0".into());
    }
    if money.cents() > limits::MAX_PRICE_CENTS {
        return Err(format!("must be at most {}", Money::from_cents(limits::MAX_PRICE_CENTS)));
    }
    Ok(money)
}

/// Collects field errors; `reject` and `missing` return `None` so a failed field reads as one expression.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }

    fn reject<T>(&mut self, field: impl Into<String>, message: impl Into<String>) -> Option<T> {
        self.add(field, message);
        None
    }

    fn missing<T>(&mut self, field: impl Into<String>) -> Option<T> {
        self.reject(field, "is required")
    }

    fn into_error(self) -> RequestError {
        RequestError::Invalid(self.0)
    }
}

/// Characters no catalogue key has, and the two that JSON carries raw yet SNS and SQS refuse to store (U+FFFE,
/// U+FFFF): an order holding one would be accepted here and then refused by the bus forever.
fn is_unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{FFFE}' | '\u{FFFF}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields(body: &str) -> Vec<String> {
        match OrderRequest::from_json(body.as_bytes()) {
            Err(RequestError::Invalid(errors)) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected field errors for {body}, got {other:?}"),
        }
    }

    #[test]
    fn accepts_the_lab_request_exactly() {
        let body =
            r#"{"customer_id": 1234, "items": [{"product_id": "PROD-001", "quantity": 2, "price": 49.99}]}"#;
        let request = OrderRequest::from_json(body.as_bytes()).unwrap();
        assert_eq!(request.customer_id, 1234);
        assert_eq!(
            request.items,
            vec![LineItem { product_id: "PROD-001".into(), quantity: 2, price: Money::from_cents(4999) }]
        );
    }

    #[test]
    fn malformed_json_is_not_a_field_error() {
        for body in ["", "{", "{\"customer_id\": }", "nope", "{} {}"] {
            assert!(
                matches!(OrderRequest::from_json(body.as_bytes()), Err(RequestError::Malformed(_))),
                "{body}"
            );
        }
    }

    #[test]
    fn reports_every_failing_field() {
        let body = r#"{"customer_id": 0, "extra": true, "items": [
            {"product_id": "", "quantity": 0, "price": 0},
            {"product_id": 7, "quantity": 1.5, "price": 0.001, "color": "red"},
            {"quantity": 1001, "price": "49.99"},
            {"product_id": "ok", "quantity": 1, "price": -1}
        ]}"#;
        assert_eq!(
            fields(body),
            [
                "extra",
                "customer_id",
                "items[0].product_id",
                "items[0].quantity",
                "items[0].price",
                "items[1].color",
                "items[1].product_id",
                "items[1].quantity",
                "items[1].price",
                "items[2].product_id",
                "items[2].quantity",
                "items[2].price",
                "items[3].price",
            ]
        );
    }

    #[test]
    fn bounds_on_shape() {
        assert_eq!(fields("[]"), ["body"]);
        assert_eq!(fields("{}"), ["customer_id", "items"]);
        assert_eq!(fields(r#"{"customer_id": -5, "items": []}"#), ["customer_id", "items"]);
        assert_eq!(fields(r#"{"customer_id": 1.0, "items": {}}"#), ["customer_id", "items"]);
        let long_id = "x".repeat(65);
        assert_eq!(
            fields(&format!(
                r#"{{"customer_id": 1, "items": [{{"product_id": "{long_id}", "quantity": 1, "price": 1}}]}}"#
            )),
            ["items[0].product_id"]
        );
        let item = r#"{"product_id": "p", "quantity": 1, "price": 1}"#;
        let many = vec![item; 101].join(",");
        assert_eq!(fields(&format!(r#"{{"customer_id": 1, "items": [{many}]}}"#)), ["items"]);
        let hundred = vec![item; 100].join(",");
        assert!(
            OrderRequest::from_json(format!(r#"{{"customer_id": 1, "items": [{hundred}]}}"#).as_bytes())
                .is_ok()
        );
    }

    #[test]
    fn product_id_length_counts_characters_not_bytes() {
        let id = "é".repeat(64);
        let body = format!(
            r#"{{"customer_id": 1, "items": [{{"product_id": "{id}", "quantity": 1, "price": 1}}]}}"#
        );
        assert!(OrderRequest::from_json(body.as_bytes()).is_ok());
    }

    #[test]
    fn product_ids_the_bus_would_refuse_are_refused_here_by_name() {
        for escaped in [r"\uFFFF", r"\uFFFE", r"\u0000", r"tab\there", r"\u001b[31m"] {
            let body = format!(
                r#"{{"customer_id": 1, "items": [{{"product_id": "{escaped}", "quantity": 1, "price": 1}}]}}"#
            );
            assert_eq!(fields(&body), ["items[0].product_id"], "{escaped}");
        }
    }

    proptest! {
        /// Whatever the bytes, the answer is an order or a described error — never a panic.
        #[test]
        fn never_panics_on_arbitrary_bytes(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = OrderRequest::from_json(&body);
        }

        /// Any price with up to two decimals is kept to the cent.
        #[test]
        fn prices_are_exact(cents in 1i64..=limits::MAX_PRICE_CENTS, quantity in 1u32..=1000) {
            let price = Money::from_cents(cents);
            let body = format!(r#"{{"customer_id": 9, "items": [{{"product_id": "p", "quantity": {quantity}, "price": {price}}}]}}"#);
            let request = OrderRequest::from_json(body.as_bytes()).unwrap();
            prop_assert_eq!(request.items[0].price, price);
        }
    }
}
