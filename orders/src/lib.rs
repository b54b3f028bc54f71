//! The order domain, shared by every part of orderflow.
//!
//! - [`OrderRequest`]: what a client posts, validated field by field ([`RequestError`] lists every failure).
//! - [`Money`]: exact amounts in integer cents; prices never pass through binary floating point.
//! - [`Order`]: an accepted order with its id, total and [`OrderStatus`].
//! - [`WireMessage`]: the versioned JSON that travels on the bus, parsed raw or inside an SNS envelope.
//! - [`PaymentGate`]: the simulated payment processor whose few slots and seconds of latency are the
//!   bottleneck the whole project is about.

mod money;
mod order;
mod payment;
mod request;
mod wire;

pub use money::{Money, MoneyError};
pub use order::{Order, OrderStatus};
pub use payment::{
    GatewayFaults, OutageWindow, PaymentConfig, PaymentError, PaymentGate, PaymentOutcome, PaymentReceipt,
    parse_fraction,
};
pub use request::{FieldError, LineItem, OrderRequest, RequestError, limits};
pub use wire::{WIRE_VERSION, WireError, WireMessage};
