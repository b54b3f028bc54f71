//! When an order will probably be settled, from the backlog ahead of it and the fleet's drain rate, as the
//! worker registry ([`crate::registry`]) reports them.
//!
//! The method. Each worker reports its *frontier* `f`: the newest `accepted_at` among the orders it settled,
//! with `s`, the time it settled that order, and the frontier's *speed* `v`: seconds of `accepted_at` the
//! frontier advanced per second over the last minute. The queue is worked roughly oldest first, so the orders
//! between `f` and an order accepted at `a > f` are the backlog ahead of it; at a steady arrival density that
//! backlog is drained at the pace the frontier advances, so the frontier reaches `a` at `s + (a − f) / v`. The
//! fleet's frontier is the newest live worker's (workers draining one queue share its head), and its speed is
//! the live workers' speeds weighted by their rates (the drain rate each contributes).
//!
//! - A pending order: `max(s + (a − f) / v, now + S)`, where `S` is one service time (receipt to settlement,
//!   the live workers' means weighted by their rates). An order the frontier has passed (`a ≤ f`), or whose
//!   estimate is already due, still has to be claimed and paid: `now + S`.
//! - A processing order: `t + S` from its last write `t` (the claim, or its charge record), or `now + S` once
//!   that is past (the attempt overran: the best guess is another one).
//! - A settled order, no live worker, a fleet that settled nothing in the last minute (no drain rate), or no
//!   frontier speed yet where one is needed: no estimate (`None`).
//!
//! Two choices differ from the plainest reading of "now + backlog / speed + one service time":
//!
//! - The frontier is measured on the settle path, so reaching `a` already means settled: adding a service
//!   time on top would count it twice. The estimate is anchored at `s`, the time the frontier stood at `f`,
//!   rather than at `now`: at a steady pace that is exact (see the tests), and with sparse orders an idle fleet
//!   is not mistaken for a backlog (the frontier stands still between orders; anchored at `now`, a new order
//!   would be estimated the whole gap later).
//! - `S` is the workers' measured mean service time, not `Σ consumers / Σ rate`: that ratio equals the service
//!   time only while every consumer is busy, and overstates it by the idle share otherwise (100 consumers
//!   settling 1 order/s would give 100 s for a 50 ms payment).

use chrono::{DateTime, Utc};
use orders::OrderStatus;

use crate::OrderRecord;
use crate::registry::{Frontier, WorkerEntry};

/// The estimated completion time of `order` at `now`, given the registry's `fleet` (entries no longer live at
/// `now` are ignored), or `None` when there is none (see the module documentation).
pub fn estimate(order: &OrderRecord, fleet: &[WorkerEntry], now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if !matches!(order.status, OrderStatus::Pending | OrderStatus::Processing) {
        return None;
    }
    let live: Vec<&WorkerEntry> =
        fleet.iter().filter(|entry| entry.is_live(now) && entry.rate.is_finite()).collect();
    let drain_rate: f64 = live.iter().map(|entry| entry.rate.max(0.0)).sum();
    if drain_rate <= 0.0 {
        return None;
    }
    let service = weighted_mean(&live, |entry| entry.service_time)?;
    let after = |from: DateTime<Utc>, seconds: f64| {
        let delta = chrono::Duration::from_std(std::time::Duration::try_from_secs_f64(seconds).ok()?).ok()?;
        from.checked_add_signed(delta)
    };
    let soonest = after(now, service)?;
    if order.status == OrderStatus::Processing {
        return after(order.updated_at, service).filter(|due| *due > now).or(Some(soonest));
    }
    let frontier: Frontier = live.iter().filter_map(|entry| entry.frontier).max_by_key(|f| f.accepted_at)?;
    if order.accepted_at <= frontier.accepted_at {
        return Some(soonest);
    }
    let speed = weighted_mean(&live, |entry| entry.frontier.and_then(|f| f.speed))?;
    if speed <= 0.0 {
        return None;
    }
    let ahead = (order.accepted_at - frontier.accepted_at).as_seconds_f64();
    let reached = after(frontier.settled_at, ahead / speed)?;
    Some(reached.max(soonest))
}

/// The mean of `value` over the entries that have one, weighted by their rates; `None` if none has one.
fn weighted_mean(entries: &[&WorkerEntry], value: impl Fn(&WorkerEntry) -> Option<f64>) -> Option<f64> {
    let (sum, weight) = entries
        .iter()
        .filter_map(|entry| Some((value(entry).filter(|v| v.is_finite() && *v >= 0.0)?, entry.rate.max(0.0))))
        .fold((0.0, 0.0), |(sum, weight), (value, rate)| (sum + value * rate, weight + rate));
    (weight > 0.0).then(|| sum / weight)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use orders::Money;
    use uuid::Uuid;

    use super::*;
    use crate::{DEFAULT_RETENTION, NewOrder};

    fn at(seconds: f64) -> DateTime<Utc> {
        let origin = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap().to_utc();
        origin + chrono::Duration::milliseconds((seconds * 1000.0).round() as i64)
    }

    fn order(accepted: f64, status: OrderStatus, updated: f64) -> OrderRecord {
        let new = NewOrder {
            order_id: Uuid::now_v7(),
            customer_id: 1,
            total: Money::from_cents(100),
            item_count: 1,
            accepted_at: at(accepted),
        };
        OrderRecord { status, ..OrderRecord::pending(&new, at(updated), DEFAULT_RETENTION) }
    }

    /// Equal within a microsecond: the estimate divides in floating point.
    #[track_caller]
    fn assert_near(eta: Option<DateTime<Utc>>, expected: DateTime<Utc>) {
        let eta = eta.expect("an estimate");
        assert!((eta - expected).num_microseconds().unwrap().abs() <= 1, "{eta} != {expected}");
    }

    fn worker(
        rate: f64,
        service_time: f64,
        frontier: Option<(f64, f64, f64)>,
        last_seen: f64,
    ) -> WorkerEntry {
        WorkerEntry {
            worker_id: "w".into(),
            consumers: 1,
            gate_mode: "per-consumer".into(),
            breaker: None,
            rate,
            settled: 100,
            service_time: Some(service_time),
            frontier: frontier.map(|(accepted, settled, speed)| Frontier {
                accepted_at: at(accepted),
                settled_at: at(settled),
                speed: Some(speed),
            }),
            started_at: at(0.0),
            last_seen: at(last_seen),
            timeout: Duration::from_secs(15),
        }
    }

    /// One consumer drains a FIFO queue at 5 orders/s (0.2 s each, busy from t = 0) while orders arrive at
    /// 10/s (order k at k/10 s, settled at (k+1)/5 s). At t = 30 s order 149 (accepted at 14.9 s) has just
    /// settled, and the frontier has moved 14.9 s in the 29.8 s since order 0 settled: speed 0.5. Order 200,
    /// accepted at 20 s, is settled at 201/5 = 40.2 s, and the estimate says so exactly.
    #[test]
    fn a_steady_drain_gives_the_exact_settle_time() {
        let speed = (14.9 - 0.0) / (30.0 - 0.2);
        let fleet = [worker(5.0, 0.2, Some((14.9, 30.0, speed)), 30.0)];
        assert_near(estimate(&order(20.0, OrderStatus::Pending, 20.0), &fleet, at(30.0)), at(40.2));
        // Half a second later the same order's estimate has not moved: the drain is steady.
        assert_near(estimate(&order(20.0, OrderStatus::Pending, 20.0), &fleet, at(30.5)), at(40.2));
    }

    #[test]
    fn two_workers_share_the_frontier_and_their_rates_weigh_speed_and_service_time() {
        // The newer frontier is w2's; speeds 0.5 (rate 3) and 1.0 (rate 1) weigh to 0.625; service times
        // 0.2 and 0.6 to 0.3.
        let fleet = [
            worker(3.0, 0.2, Some((10.0, 29.0, 0.5)), 30.0),
            worker(1.0, 0.6, Some((15.0, 30.0, 1.0)), 30.0),
        ];
        assert_near(estimate(&order(20.0, OrderStatus::Pending, 20.0), &fleet, at(30.0)), at(38.0));
        // An order behind the frontier takes one service time.
        assert_near(estimate(&order(12.0, OrderStatus::Pending, 12.0), &fleet, at(30.0)), at(30.3));
    }

    #[test]
    fn processing_orders_take_the_rest_of_one_service_time() {
        let fleet = [worker(5.0, 2.0, Some((14.9, 30.0, 0.5)), 30.0)];
        let claimed = order(10.0, OrderStatus::Processing, 29.5);
        assert_near(estimate(&claimed, &fleet, at(30.0)), at(31.5));
        let overran = order(10.0, OrderStatus::Processing, 20.0);
        assert_near(estimate(&overran, &fleet, at(30.0)), at(32.0));
    }

    #[test]
    fn an_estimate_already_due_is_one_service_time_away() {
        // The frontier was due to reach 15 s at 30.2 s, but at 31 s the order is still pending.
        let fleet = [worker(5.0, 0.2, Some((14.9, 30.0, 0.5)), 30.0)];
        assert_near(estimate(&order(15.0, OrderStatus::Pending, 15.0), &fleet, at(31.0)), at(31.2));
    }

    #[test]
    fn no_live_worker_no_rate_or_no_speed_means_no_estimate() {
        let pending = order(20.0, OrderStatus::Pending, 20.0);
        assert_eq!(estimate(&pending, &[], at(30.0)), None, "no workers");
        let idle = [worker(0.0, 0.2, Some((14.9, 30.0, 0.5)), 30.0)];
        assert_eq!(estimate(&pending, &idle, at(30.0)), None, "zero rate");
        let gone = [worker(5.0, 0.2, Some((14.9, 30.0, 0.5)), 10.0)];
        assert_eq!(estimate(&pending, &gone, at(30.0)), None, "last seen 20 s ago, timeout 15 s");
        let mut unmeasured = worker(5.0, 0.2, Some((14.9, 30.0, 0.5)), 30.0);
        unmeasured.frontier.as_mut().unwrap().speed = None;
        assert_eq!(estimate(&pending, &[unmeasured.clone()], at(30.0)), None, "no speed yet");
        let behind = order(10.0, OrderStatus::Pending, 10.0);
        // An order the frontier passed needs no speed.
        assert_near(estimate(&behind, &[unmeasured], at(30.0)), at(30.2));
    }

    #[test]
    fn settled_orders_have_no_estimate() {
        let fleet = [worker(5.0, 0.2, Some((14.9, 30.0, 0.5)), 30.0)];
        for status in [OrderStatus::Completed, OrderStatus::Declined, OrderStatus::Failed] {
            assert_eq!(estimate(&order(10.0, status, 12.0), &fleet, at(30.0)), None, "{status:?}");
        }
    }
}
