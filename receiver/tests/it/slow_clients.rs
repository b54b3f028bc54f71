//! Clients that hold connections without finishing their requests: headers trickled a byte at a time are cut
//! off at the header-read timeout, connections beyond the cap are closed at once, and a body trickling in does
//! not hold one of the endpoint's admission permits. Meanwhile ordinary clients get their 202s. Real time,
//! with bounds far from the timeouts.

use std::sync::Arc;
use std::time::Duration;

use bus::embedded::{EmbeddedStack, StackConfig};
use receiver::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::{TestServer, client, order};

async fn start(config: Config) -> (TestServer, EmbeddedStack) {
    let stack = EmbeddedStack::new(StackConfig::default());
    let server = TestServer::start(config, Arc::new(stack.topic.clone())).await;
    (server, stack)
}

/// Whether the server closed `stream` (a read returns end of file or an error) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue, // an error answer before the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sent_a_byte_at_a_time_are_cut_off_while_others_are_served() {
    let config = Config { header_read_timeout: Duration::from_millis(500), ..Config::default() };
    let (server, _stack) = start(config).await;
    let mut slow = TcpStream::connect(server.address).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        // Fifty bytes a fifth of a second apart: ten seconds of headers if nothing cuts them off.
        for byte in b"POST /orders/async HTTP/1.1\r\nhost: orderflow\r\nx-pad: 1234" {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        slow
    });

    let client = client();
    for customer in 1..=10 {
        let answer = server.post_order(&client, "/orders/async", &order(customer)).await;
        assert_eq!(answer.status, 202, "{}", answer.json);
    }
    let mut slow = trickle.await.unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)).await,
        "the trickling client is still connected"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "cut off at the timeout, not after ten seconds of bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_at_once() {
    let config =
        Config { max_connections: 3, header_read_timeout: Duration::from_secs(30), ..Config::default() };
    let (server, _stack) = start(config).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(server.address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // the server has accepted them
    let mut beyond = TcpStream::connect(server.address).await.unwrap();
    assert!(closed_within(&mut beyond, Duration::from_secs(5)).await, "a fourth connection was kept open");

    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(200)).await; // the server has seen the close
    let answer = server.post_order(&client(), "/orders/async", &order(1)).await;
    assert_eq!(answer.status, 202, "a freed place serves again: {}", answer.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_in_holds_no_admission_permit() {
    let config = Config { max_async_in_flight: 1, ..Config::default() };
    let (server, _stack) = start(config).await;
    let body = order(7);
    let mut slow = TcpStream::connect(server.address).await.unwrap();
    let head = format!(
        "POST /orders/async HTTP/1.1\r\nhost: orderflow\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..5]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // the slow request is in its handler, reading

    let client = client();
    for customer in 1..=3 {
        let answer = server.post_order(&client, "/orders/async", &order(customer)).await;
        assert_eq!(answer.status, 202, "the one permit is free while the slow body arrives: {}", answer.json);
    }
    slow.write_all(&body.as_bytes()[5..]).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let read = slow.read(&mut buffer).await.unwrap();
        assert!(read > 0, "closed before answering");
        answer.extend_from_slice(&buffer[..read]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 202"), "{}", String::from_utf8_lossy(&answer));
}
