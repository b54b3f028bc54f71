//! Bad input over real HTTP: every error status in the one JSON shape, and property tests that arbitrary
//! bytes and arbitrary JSON (posted as orders) and arbitrary order ids (looked up) always get a 2xx/4xx JSON
//! answer, never a 5xx.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use crate::common::{Answer, TestServer, client, order};
use bus::embedded::{EmbeddedStack, StackConfig};
use proptest::prelude::*;
use receiver::{Config, MAX_BODY_BYTES};
use serde_json::{Value, json};

async fn start() -> (TestServer, EmbeddedStack) {
    let stack = EmbeddedStack::new(StackConfig::default());
    (TestServer::start(Config::default(), Arc::new(stack.topic.clone())).await, stack)
}

async fn post(server: &TestServer, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Answer {
    let mut request = client().post(server.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    Answer::read(request.send().await.unwrap()).await
}

#[tokio::test]
async fn each_client_error_has_its_status_and_the_error_shape() {
    let (server, stack) = start().await;
    let json = Some("application/json");
    for endpoint in ["/orders/async", "/orders/sync"] {
        let malformed = post(&server, endpoint, json, b"{\"customer_id\": 1,".to_vec()).await;
        assert_eq!((malformed.status, malformed.error_code()), (400, "malformed_json"));

        let no_type = post(&server, endpoint, None, order(1).into_bytes()).await;
        assert_eq!((no_type.status, no_type.error_code()), (415, "unsupported_media_type"));
        let wrong_type = post(&server, endpoint, Some("text/plain"), order(1).into_bytes()).await;
        assert_eq!((wrong_type.status, wrong_type.error_code()), (415, "unsupported_media_type"));

        let huge = format!(r#"{{"customer_id": 1, "pad": "{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        let too_large = post(&server, endpoint, json, huge.into_bytes()).await;
        assert_eq!((too_large.status, too_large.error_code()), (413, "payload_too_large"));

        let invalid = json!({"customer_id": 0, "items": [{"product_id": "", "quantity": 0, "price": 1.001}]});
        let invalid = post(&server, endpoint, json, invalid.to_string().into_bytes()).await;
        assert_eq!((invalid.status, invalid.error_code()), (422, "validation_failed"));
        let fields: Vec<&str> = invalid.json["error"]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["customer_id", "items[0].product_id", "items[0].quantity", "items[0].price"]);
        assert!(invalid.json["error"]["fields"][0]["message"].is_string());
    }

    let missing = Answer::read(client().get(server.url("/no/such/thing")).send().await.unwrap()).await;
    assert_eq!((missing.status, missing.error_code()), (404, "not_found"));

    let wrong_method = Answer::read(client().get(server.url("/orders/async")).send().await.unwrap()).await;
    assert_eq!((wrong_method.status, wrong_method.error_code()), (405, "method_not_allowed"));
    assert_eq!(wrong_method.allow.as_deref(), Some("POST"));
    let wrong_method = Answer::read(client().delete(server.url("/health")).send().await.unwrap()).await;
    assert_eq!((wrong_method.status, wrong_method.error_code()), (405, "method_not_allowed"));
    let order_url = server.url(&format!("/orders/{}", uuid::Uuid::now_v7()));
    let wrong_method = Answer::read(client().put(order_url).send().await.unwrap()).await;
    assert_eq!((wrong_method.status, wrong_method.error_code()), (405, "method_not_allowed"));
    assert_eq!(wrong_method.allow.as_deref(), Some("GET,HEAD"));

    assert_eq!(stack.queue.stats_now().visible, 0, "nothing invalid was published");
    let stats = server.state.stats();
    assert_eq!((stats.async_orders.invalid, stats.sync_orders.invalid), (5, 5));
    assert_eq!(stats.sync_orders.completed + stats.async_orders.accepted, 0);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_never_arrives_times_out_with_408_and_frees_its_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, _stack) = start().await;
    let mut stream = tokio::net::TcpStream::connect(server.address).await.unwrap();
    let head = "POST /orders/async HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n{\"customer_id\"";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut response = vec![0; 4096];
    let read = stream.read(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response[..read]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(response.contains(r#""code":"body_timeout""#), "{response}");
    assert_eq!(started.elapsed().as_secs(), 10);
    assert_eq!(server.state.stats().in_flight, 0);
}

#[tokio::test]
async fn health_and_stats_answer_json() {
    let (server, _stack) = start().await;
    let health = Answer::read(client().get(server.url("/health")).send().await.unwrap()).await;
    assert_eq!((health.status, &health.json), (200, &json!({"status": "ok"})));

    server.post_order(&client(), "/orders/async", &order(1)).await;
    // Operators' paths are not on the public port, which the load balancer routes to.
    for path in ["/stats", "/metrics"] {
        let public = Answer::read(client().get(server.url(path)).send().await.unwrap()).await;
        assert_eq!((public.status, public.error_code()), (404, "not_found"), "{path}");
    }
    let stats = server.admin_get(&client(), "/stats").await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json["mode"], "embedded");
    assert_eq!(stats.json["async"]["accepted"], 1);
    assert_eq!(stats.json["sync"]["gate_slots"], 1);
    let parsed: receiver::ReceiverStats = serde_json::from_value(stats.json).unwrap();
    assert_eq!(parsed.async_orders.published, 1);

    // No recorder is installed in this test binary: /metrics says so in the error shape.
    let metrics = server.admin_get(&client(), "/metrics").await;
    assert_eq!((metrics.status, metrics.error_code()), (404, "metrics_disabled"));
    let admin_health = server.admin_get(&client(), "/health").await;
    assert_eq!(admin_health.status, 200);
}

/// One receiver on its own runtime for all property-test cases.
fn shared_server() -> &'static (tokio::runtime::Runtime, SocketAddr, reqwest::Client) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, SocketAddr, reqwest::Client)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let address = runtime.block_on(async {
            let stack = EmbeddedStack::new(StackConfig::default());
            let server = TestServer::start(Config::default(), Arc::new(stack.topic.clone())).await;
            // Keep the queue from growing over the run.
            tokio::spawn(async move {
                use bus::Consumer;
                loop {
                    let received = stack.queue.receive(10, std::time::Duration::from_secs(1)).await.unwrap();
                    let handles = received.into_iter().map(|m| m.receipt_handle).collect::<Vec<_>>();
                    if !handles.is_empty() {
                        stack.queue.delete_batch(handles).await.unwrap();
                    }
                }
            });
            let address = server.address;
            std::mem::forget(server); // serve until the test binary exits
            address
        });
        (runtime, address, reqwest::Client::new())
    })
}

fn post_blocking(path: &str, body: Vec<u8>) -> Answer {
    let (runtime, address, client) = shared_server();
    runtime.block_on(async {
        let response = client
            .post(format!("http://{address}{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        Answer::read(response).await
    })
}

fn get_blocking(path: &str) -> Answer {
    let (runtime, address, client) = shared_server();
    runtime.block_on(async {
        Answer::read(client.get(format!("http://{address}{path}")).send().await.unwrap()).await
    })
}

/// `bytes` as a path segment: unreserved characters as they are, every other byte percent-encoded.
fn percent_encoded(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// What goes after `/orders/`: `None` for the id of an order just accepted; otherwise arbitrary bytes, UUIDs in
/// each textual form, near-UUIDs, and raw paths with more segments.
fn any_order_path() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        1 => Just(None),
        3 => prop::collection::vec(any::<u8>(), 0..48).prop_map(|bytes| Some(percent_encoded(&bytes))),
        1 => any::<u128>().prop_map(|n| Some(uuid::Uuid::from_u128(n).hyphenated().to_string())),
        1 => any::<u128>().prop_map(|n| Some(uuid::Uuid::from_u128(n).simple().to_string())),
        1 => any::<u128>().prop_map(|n| Some(percent_encoded(uuid::Uuid::from_u128(n).braced().to_string().as_bytes()))),
        1 => any::<u128>().prop_map(|n| Some(uuid::Uuid::from_u128(n).urn().to_string())),
        2 => "[0-9a-fA-F-]{30,40}".prop_map(Some),
        1 => "[a-z0-9./-]{0,24}".prop_map(Some),
    ]
}

fn assert_client_answer(answer: &Answer) {
    assert!(
        (200..300).contains(&answer.status) || (400..500).contains(&answer.status),
        "status {} for a client's input: {}",
        answer.status,
        answer.json
    );
    assert!(answer.content_type.as_deref().is_some_and(|t| t.starts_with("application/json")));
    if answer.status >= 400 {
        answer.error_code();
    } else {
        assert!(answer.json["order_id"].is_string(), "{}", answer.json);
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects shaped like orders, with arbitrary values where the fields go, so validation is exercised deeply
/// (and a fair share of cases are valid orders, answered 202).
fn order_like() -> impl Strategy<Value = Value> {
    let customer = prop_oneof![4 => (1u64..1_000_000).prop_map(Value::from), 1 => any_json()];
    let quantity = prop_oneof![4 => (1u32..=1000).prop_map(Value::from), 1 => any_json()];
    let price = prop_oneof![
        3 => "[1-9][0-9]{0,3}(\\.[0-9]{1,2})?".prop_map(|n| serde_json::from_str::<Value>(&n).unwrap()),
        1 => "[0-9]\\.[0-9]{3}".prop_map(|n| serde_json::from_str::<Value>(&n).unwrap()),
        1 => any_json(),
    ];
    let item = (quantity, price, "PROD-[0-9]{3}")
        .prop_map(|(quantity, price, id)| json!({"product_id": id, "quantity": quantity, "price": price}));
    (customer, prop::collection::vec(item, 0..4))
        .prop_map(|(customer, items)| json!({"customer_id": customer, "items": items}))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_get_a_json_client_answer(body in prop::collection::vec(any::<u8>(), 0..512), sync in any::<bool>()) {
        let path = if sync { "/orders/sync" } else { "/orders/async" };
        // Sync payments would take seconds each; arbitrary bytes are essentially never a valid order.
        assert_client_answer(&post_blocking(path, body));
    }

    #[test]
    fn arbitrary_json_gets_a_json_client_answer(value in any_json()) {
        assert_client_answer(&post_blocking("/orders/async", value.to_string().into_bytes()));
    }

    #[test]
    fn order_like_json_gets_a_json_client_answer(value in order_like()) {
        assert_client_answer(&post_blocking("/orders/async", value.to_string().into_bytes()));
    }

    /// Whatever characters a product id holds, the order is accepted (202) or refused by name (422), never
    /// left to the bus to refuse (a 503 that no retry cures): the embedded bus applies SNS's and SQS's rules.
    #[test]
    fn any_product_id_is_accepted_or_refused_by_name(id in "\\PC{0,8}[\\x00-\\x1f\\u{fffe}\\u{ffff}\\u{d7ff}-\\u{e000}]?\\PC{0,8}") {
        let body = json!({"customer_id": 1, "items": [{"product_id": id, "quantity": 1, "price": 1}]});
        let answer = post_blocking("/orders/async", body.to_string().into_bytes());
        match answer.status {
            202 => {}
            422 => assert_eq!(answer.json["error"]["fields"][0]["field"], "items[0].product_id", "{}", answer.json),
            other => panic!("{other}: {}", answer.json),
        }
    }

    #[test]
    fn arbitrary_order_ids_get_a_json_client_answer(id in any_order_path()) {
        let id = id.unwrap_or_else(|| {
            let accepted = post_blocking("/orders/async", order(1).into_bytes());
            accepted.json["order_id"].as_str().expect("an accepted order").to_owned()
        });
        let answer = get_blocking(&format!("/orders/{id}"));
        assert_client_answer(&answer);
        if answer.status == 200 {
            prop_assert_eq!(answer.json["order_id"].as_str(), Some(id.as_str()));
        }
    }
}
