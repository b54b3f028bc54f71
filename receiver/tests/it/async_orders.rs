//! `POST /orders/async` over real HTTP: acceptance only after the bus acknowledged, micro-batching, failures,
//! shedding and shutdown.

use std::sync::Arc;
use std::time::Duration;

use crate::common::{Answer, ScriptedPublisher, TestServer, client, eventually, order};
use bus::embedded::{EmbeddedStack, StackConfig};
use bus::{BusError, Consumer};
use orders::{Money, WireMessage};
use receiver::Config;

#[tokio::test]
async fn accepted_order_is_on_the_queue_and_parses() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let server = TestServer::start(Config::default(), Arc::new(stack.topic.clone())).await;

    let response = client()
        .post(server.url("/orders/async"))
        .header("content-type", "application/json; charset=utf-8")
        .body(order(1234))
        .send()
        .await
        .unwrap();
    let answer = Answer::read(response).await;

    assert_eq!(answer.status, 202, "{}", answer.json);
    assert_eq!(answer.content_type.as_deref(), Some("application/json"));
    assert_eq!(answer.json["status"], "pending");
    assert!(answer.json["message"].as_str().is_some_and(|m| !m.is_empty()));
    let order_id: uuid::Uuid = answer.json["order_id"].as_str().unwrap().parse().unwrap();
    let accepted_at: chrono::DateTime<chrono::Utc> =
        answer.json["accepted_at"].as_str().unwrap().parse().unwrap();

    let received = stack.queue.receive(10, Duration::ZERO).await.unwrap();
    assert_eq!(received.len(), 1, "exactly the one accepted order is queued");
    assert_eq!(received[0].attributes.get(bus::ATTR_SCHEMA_VERSION).map(String::as_str), Some("1"));
    let wire = WireMessage::parse(&received[0].body).unwrap();
    assert_eq!(wire.order.order_id, order_id);
    assert_eq!(wire.order.customer_id, 1234);
    assert_eq!(wire.order.total, Money::from_cents(2 * 4999 + 10));
    assert_eq!(wire.accepted_at, accepted_at);

    let stats = server.state.stats();
    assert_eq!((stats.async_orders.accepted, stats.async_orders.published), (1, 1));
}

#[tokio::test]
async fn bus_failure_answers_503_and_claims_nothing() {
    let stack = EmbeddedStack::new(StackConfig::default());
    let config = Config { retry_after: Duration::from_secs(3), ..Config::default() };
    let server = TestServer::start(config, Arc::new(stack.topic.clone())).await;
    let client = client();

    stack
        .topic
        .inject_failure(Some(BusError::Transient { code: "Throttling".into(), message: "slow down".into() }));
    let answer = server.post_order(&client, "/orders/async", &order(1)).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.error_code(), "bus_unavailable");
    assert_eq!(answer.retry_after.as_deref(), Some("3"));
    assert_eq!(stack.queue.stats_now().visible, 0);

    stack.topic.inject_failure(None);
    let answer = server.post_order(&client, "/orders/async", &order(1)).await;
    assert_eq!(answer.status, 202);
    assert_eq!(stack.queue.stats_now().visible, 1);

    let stats = server.state.stats().async_orders;
    assert_eq!((stats.accepted, stats.failed, stats.published), (1, 1, 1));
}

#[tokio::test(start_paused = true)]
async fn unacknowledged_publish_times_out_with_503_outcome_unknown() {
    let publisher = Arc::new(ScriptedPublisher::new().held());
    let config = Config { publish_timeout: Duration::from_millis(300), ..Config::default() };
    let server = TestServer::start(config, publisher.clone()).await;

    let started = tokio::time::Instant::now();
    let answer = server.post_order(&client(), "/orders/async", &order(1)).await;
    assert_eq!(answer.status, 503);
    // The publish may still land: never "not accepted", and the way to retry safely.
    assert_eq!(answer.error_code(), "outcome_unknown");
    let message = answer.json["error"]["message"].as_str().unwrap();
    assert!(!message.contains("not accepted") && message.contains("Idempotency-Key"), "{message}");
    assert!(answer.retry_after.is_some());
    assert!(
        started.elapsed() >= Duration::from_millis(300) && started.elapsed() < Duration::from_millis(400)
    );
    assert_eq!(server.state.stats().async_orders.accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_batch_failure_fails_only_its_own_requests() {
    // Customer 13's orders are refused by the broker, entry by entry; everyone else's go through. The broker
    // is held until all twenty requests wait, so that batches form however slowly the requests arrive.
    let publisher = Arc::new(
        ScriptedPublisher::new().held().failing(|message| message.body.contains(r#""customer_id":13,"#)),
    );
    let config = Config { max_batches_in_flight: 1, ..Config::default() };
    let server = Arc::new(TestServer::start(config, publisher.clone()).await);
    let client = client();

    let requests: Vec<_> = (0..20u64)
        .map(|i| {
            let (server, client) = (server.clone(), client.clone());
            let customer = if i % 2 == 0 { 13 } else { 100 + i };
            tokio::spawn(async move {
                (customer, server.post_order(&client, "/orders/async", &order(customer)).await)
            })
        })
        .collect();
    eventually("twenty requests wait for the broker", 2000, || {
        server.state.stats().async_orders.in_flight == 20
    })
    .await;
    publisher.release();
    for request in requests {
        let (customer, answer) = request.await.unwrap();
        if customer == 13 {
            assert_eq!(answer.status, 503, "{}", answer.json);
            assert_eq!(answer.error_code(), "bus_unavailable");
        } else {
            assert_eq!(answer.status, 202, "{}", answer.json);
        }
    }
    let mixed = publisher.calls().into_iter().any(|call| {
        let failing = call.iter().filter(|m| m.body.contains(r#""customer_id":13,"#)).count();
        failing > 0 && failing < call.len()
    });
    assert!(mixed, "some batch held both failing and succeeding entries: {:?}", publisher.batch_sizes());
    let stats = server.state.stats().async_orders;
    assert_eq!((stats.accepted, stats.failed), (10, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_coalesced_into_batches() {
    // The broker is held until all hundred requests wait, so that they are concurrent however slowly they
    // arrive: the calls in flight fill up and the rest must share batches.
    let publisher = Arc::new(ScriptedPublisher::new().held());
    let server = Arc::new(TestServer::start(Config::default(), publisher.clone()).await);
    let client = client();

    let requests: Vec<_> = (0..100u64)
        .map(|i| {
            let (server, client) = (server.clone(), client.clone());
            tokio::spawn(
                async move { server.post_order(&client, "/orders/async", &order(i + 1)).await.status },
            )
        })
        .collect();
    eventually("a hundred requests wait for the broker", 2000, || {
        server.state.stats().async_orders.in_flight == 100
    })
    .await;
    publisher.release();
    for request in requests {
        assert_eq!(request.await.unwrap(), 202);
    }

    let sizes = publisher.batch_sizes();
    assert_eq!(sizes.iter().sum::<usize>(), 100, "every order published exactly once");
    assert!(sizes.iter().all(|&size| (1..=10).contains(&size)), "{sizes:?}");
    assert!(sizes.iter().any(|&size| size > 1), "no coalescing happened: {sizes:?}");
    assert!(sizes.len() < 100);
    assert_eq!(publisher.lone_batches(), 0, "a lone message goes through Publish, not PublishBatch");
    assert_eq!(server.state.stats().async_orders.publish_calls, sizes.len() as u64);
}

#[tokio::test]
async fn an_idle_receiver_publishes_at_once() {
    let publisher = Arc::new(ScriptedPublisher::new());
    let config = Config { batch_linger: Duration::from_secs(60), ..Config::default() };
    let server = TestServer::start(config, publisher.clone()).await;
    let client = client();
    for customer in 1..=3 {
        // A 60 s linger would show here if the batcher waited for company while nothing was in flight.
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            server.post_order(&client, "/orders/async", &order(customer)),
        )
        .await
        .expect("answered without lingering");
        assert_eq!(answer.status, 202);
    }
    assert_eq!(publisher.batch_sizes(), [1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_shed_fast_and_memory_stays_bounded() {
    // The broker stalls: without a limit every request would wait (and hold its body) for as long as it lasts.
    let publisher = Arc::new(ScriptedPublisher::new().held());
    let config = Config { max_async_in_flight: 8, retry_after: Duration::from_secs(2), ..Config::default() };
    let server = Arc::new(TestServer::start(config, publisher.clone()).await);
    let client = client();

    let requests: Vec<_> = (0..200u64)
        .map(|i| {
            let (server, client) = (server.clone(), client.clone());
            tokio::spawn(async move { server.post_order(&client, "/orders/async", &order(i + 1)).await })
        })
        .collect();
    // All but the admitted 8 are answered while the broker is still stalled.
    eventually("192 requests were shed", 2000, || server.state.stats().async_orders.shed == 192).await;
    let stats = server.state.stats().async_orders;
    assert_eq!(stats.in_flight, 8, "what is held is bounded by the limit, not by the offered load");
    assert_eq!(stats.accepted, 0);

    publisher.release();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for request in requests {
        let answer = request.await.unwrap();
        if answer.status == 503 {
            assert_eq!(answer.error_code(), "overloaded");
            assert_eq!(answer.retry_after.as_deref(), Some("2"));
        }
        *statuses.entry(answer.status).or_default() += 1;
    }
    assert_eq!(statuses, [(202, 8), (503, 192)].into());
    let published: usize = publisher.batch_sizes().iter().sum();
    assert_eq!(published, 8, "only admitted requests reached the broker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_pending_publishes_and_stops_accepting() {
    // One call at a time and the broker stalled: the first order's call is in flight, the other four wait in
    // the batcher when the shutdown signal arrives.
    let publisher = Arc::new(ScriptedPublisher::new().held());
    let config = Config { max_batches_in_flight: 1, ..Config::default() };
    let mut server = TestServer::start(config, publisher.clone()).await;
    let client = client();
    let url = server.url("/orders/async");

    let requests: Vec<_> = (0..5u64)
        .map(|i| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(order(i + 1))
                    .send()
                    .await;
                Answer::read(response.unwrap()).await
            })
        })
        .collect();
    eventually("five requests are in flight", 2000, || server.state.stats().in_flight == 5).await;
    assert_eq!(publisher.calls_started(), 1);

    server.signal_shutdown();
    // The listener closes once the server task sees the signal, which on a loaded machine may take a while:
    // poll (up to ~10 s) rather than guess a delay. The stalled broker keeps the server draining meanwhile.
    let mut refused = false;
    for _ in 0..200 {
        if client.get(server.url("/health")).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(refused, "no new connections after the signal");
    assert!(!server.server.is_finished(), "still draining");

    publisher.release();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 202, "{}", answer.json);
    }
    let ran = tokio::time::timeout(Duration::from_secs(5), &mut server.server).await;
    ran.expect("run returns once drained").unwrap().expect("clean shutdown");
    assert_eq!(publisher.batch_sizes().iter().sum::<usize>(), 5, "every pending publish was flushed");
}
