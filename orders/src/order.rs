//! An accepted order.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{LineItem, Money, OrderRequest};

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Accepted and queued, not yet picked up by a worker.
    Pending,
    /// A worker is taking payment.
    Processing,
    /// Paid.
    Completed,
    /// The payment processor said no: a business outcome, not an error.
    Declined,
    /// Gave up after retries (the message is in the dead-letter queue).
    Failed,
}

/// An order the system has accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// A UUIDv7: unique without coordination, and time-ordered so ids sort by acceptance time.
    pub order_id: Uuid,
    /// The paying customer.
    pub customer_id: u64,
    /// What is bought.
    pub items: Vec<LineItem>,
    /// The sum of price × quantity over the items, exact.
    pub total: Money,
    /// Where the order is in its life.
    pub status: OrderStatus,
    /// When the order was created.
    pub created_at: DateTime<Utc>,
}

impl Order {
    /// A new pending order for a validated request, with a fresh id.
    pub fn new(request: OrderRequest) -> Self {
        let total = total_of(&request.items)
            .expect("validated requests are bounded so that their total cannot overflow");
        Self {
            order_id: Uuid::now_v7(),
            customer_id: request.customer_id,
            items: request.items,
            total,
            status: OrderStatus::Pending,
            created_at: Utc::now(),
        }
    }
}

/// Σ price × quantity, `None` on overflow.
pub(crate) fn total_of(items: &[LineItem]) -> Option<Money> {
    items
        .iter()
        .try_fold(Money::default(), |sum, item| sum.checked_add(item.price.checked_mul(item.quantity)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_order_is_pending_with_exact_total_and_v7_id() {
        let request = OrderRequest::from_json(
            br#"{"customer_id": 7, "items": [
                {"product_id": "A", "quantity": 3, "price": 0.10},
                {"product_id": "B", "quantity": 2, "price": 49.99}]}"#,
        )
        .unwrap();
        let order = Order::new(request);
        assert_eq!(order.total, Money::from_cents(3 * 10 + 2 * 4999));
        assert_eq!(order.total.to_string(), "100.28");
        assert_eq!(order.status, OrderStatus::Pending);
        assert_eq!(order.order_id.get_version_num(), 7);
    }

    #[test]
    fn maximal_order_total_does_not_overflow() {
        let item = LineItem {
            product_id: "p".into(),
            quantity: crate::limits::MAX_QUANTITY,
            price: Money::from_cents(crate::limits::MAX_PRICE_CENTS),
        };
        assert!(total_of(&vec![item; crate::limits::MAX_ITEMS]).is_some());
    }
}
