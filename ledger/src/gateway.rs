//! The payment gateway made idempotent on the order id, as real processors are on an idempotency key.
//!
//! The simulated [`PaymentGate`] decides; the decision becomes the order's payment only through the ledger's
//! conditional [`Ledger::record_charge`], so the first decision recorded for an order is its only one, in any
//! number of processes and across crashes at any point. Charging an order that already has a payment
//! returns that payment and charges nothing.

use std::sync::Arc;

use orders::{Order, PaymentError, PaymentGate};
use uuid::Uuid;

use crate::{ChargeRecord, Ledger, LedgerError, PaymentRecord};

/// A payment gate whose charges are recorded, once per order, in the ledger. Cheap to clone (two `Arc`s).
#[derive(Clone)]
pub struct IdempotentGateway {
    gate: PaymentGate,
    ledger: Arc<dyn Ledger>,
}

/// Why a charge reached no recorded decision. Nothing was charged; a later attempt can succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChargeError {
    /// The gateway failed before deciding.
    #[error(transparent)]
    Gateway(#[from] PaymentError),
    /// The gateway decided, but its record could not be written: the decision is void. (If the write landed
    /// after all, the next attempt finds and returns it.)
    #[error("payment could not be recorded: {0}")]
    Ledger(#[from] LedgerError),
}

/// A charge's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charged {
    /// The order's payment.
    pub payment: PaymentRecord,
    /// Whether it was recorded earlier (by this or another process) and nothing was charged now.
    pub replayed: bool,
}

impl IdempotentGateway {
    /// Wraps `gate`, recording its decisions in `ledger`.
    pub fn new(gate: PaymentGate, ledger: Arc<dyn Ledger>) -> Self {
        Self { gate, ledger }
    }

    /// Charges `order` once. `recorded` is the payment the caller already knows of (from its claim's
    /// record): if there is one it is the answer at once, and nothing is charged. Otherwise the gate decides
    /// and the ledger keeps the first decision for the order; a decision that lost to an earlier one is void,
    /// and the earlier one is returned.
    pub async fn charge(
        &self,
        order: &Order,
        recorded: Option<PaymentRecord>,
    ) -> Result<Charged, ChargeError> {
        if let Some(payment) = recorded {
            return Ok(Charged { payment, replayed: true });
        }
        let receipt = self.gate.pay(order).await?;
        let payment =
            PaymentRecord { outcome: receipt.outcome, reference: format!("pay_{}", Uuid::new_v4().simple()) };
        match self.ledger.record_charge(order.order_id, &payment).await? {
            ChargeRecord::Recorded(_) => Ok(Charged { payment, replayed: false }),
            ChargeRecord::AlreadyRecorded(first) => Ok(Charged { payment: first, replayed: true }),
        }
    }

    /// The gate behind it.
    pub fn gate(&self) -> &PaymentGate {
        &self.gate
    }
}
