//! Request count and latency by route and status, with each series' handles looked up once.
//!
//! Why not `metrics::counter!(name, labels)` on every request: each such call looks the series up in the
//! recorder's registry (building the key, hashing the labels, taking a shared lock), and on two busy cores that
//! lookup cost about a sixth of the receiver's throughput. Here each (route, status) series is looked up on its
//! first request and its handles are kept, so a request only increments a counter and records a sample.

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use metrics::{Counter, Histogram};

/// The routes, for the `route` label. Any other path is labelled `unmatched`, so a scan of random paths cannot
/// create unbounded metric series; every `/orders/{id}` lookup shares the one label of its route.
const ROUTES: [&str; 6] = ["/orders/async", "/orders/sync", "/health", "/stats", "/metrics", ORDER_BY_ID];
const UNMATCHED: &str = "unmatched";
const ORDER_BY_ID: &str = "/orders/{id}";
/// `ORDER_BY_ID`'s position in [`ROUTES`].
const ORDER_BY_ID_INDEX: usize = 5;

/// One slot per valid status code, 100 to 999 (`StatusCode` allows no others): about 200 KB of handles.
const STATUS_SLOTS: usize = 900;

/// A route's position in [`ROUTES`], or `ROUTES.len()` for `unmatched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route(usize);

impl Route {
    pub(crate) fn of(path: &str) -> Self {
        if let Some(index) = ROUTES.iter().position(|route| *route == path) {
            return Self(index);
        }
        // What the router sends to `/orders/{id}`: one more non-empty segment (the static routes matched above).
        let order_by_id = path.strip_prefix("/orders/").is_some_and(|id| !id.is_empty() && !id.contains('/'));
        Self(if order_by_id { ORDER_BY_ID_INDEX } else { ROUTES.len() })
    }

    fn label(self) -> &'static str {
        ROUTES.get(self.0).copied().unwrap_or(UNMATCHED)
    }
}

/// The handles of one (route, status) series.
#[derive(Debug)]
struct Series {
    requests: Counter,
    latency: Histogram,
}

/// `receiver_http_requests_total` and `receiver_http_request_duration_seconds`, by route and status.
#[derive(Debug)]
pub(crate) struct RequestMetrics {
    series: Box<[OnceLock<Series>]>,
}

impl RequestMetrics {
    pub(crate) fn new() -> Self {
        Self { series: (0..(ROUTES.len() + 1) * STATUS_SLOTS).map(|_| OnceLock::new()).collect() }
    }

    /// Counts one request and records how long it took.
    pub(crate) fn record(&self, route: Route, status: StatusCode, elapsed: Duration) {
        let code = usize::from(status.as_u16()) - 100;
        let series = self.series[route.0 * STATUS_SLOTS + code].get_or_init(|| {
            let (route, status) = (route.label(), status.as_str().to_owned());
            Series {
                requests: metrics::counter!("receiver_http_requests_total", "route" => route, "status" => status.clone()),
                latency: metrics::histogram!(
                    "receiver_http_request_duration_seconds", "route" => route, "status" => status
                ),
            }
        });
        series.requests.increment(1);
        series.latency.record(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_status_and_any_path_has_a_series() {
        let metrics = RequestMetrics::new();
        for code in [100, 202, 599, 999] {
            let status = StatusCode::from_u16(code).unwrap();
            metrics.record(Route::of("/orders/async"), status, Duration::from_millis(1));
            metrics.record(Route::of("/no/such/path"), status, Duration::from_millis(1));
        }
        assert_eq!(Route::of("/no/such/path").label(), "unmatched");
        assert_eq!(Route::of("/metrics").label(), "/metrics");
    }

    #[test]
    fn every_order_lookup_shares_one_label() {
        assert_eq!(ROUTES[ORDER_BY_ID_INDEX], ORDER_BY_ID);
        for path in ["/orders/0190b5c4-5d3e-7a2b-9c1d-2e3f4a5b6c7d", "/orders/not-a-uuid", "/orders/%2F"] {
            assert_eq!(Route::of(path).label(), "/orders/{id}", "{path}");
        }
        assert_eq!(Route::of("/orders/async").label(), "/orders/async");
        for path in ["/orders/", "/orders/a/b", "/orders"] {
            assert_eq!(Route::of(path).label(), "unmatched", "{path}");
        }
    }
}
