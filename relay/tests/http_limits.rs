//! The relay's HTTP listener against clients that hold connections: idle sockets, a slowloris,
//! a crowd from one address. Whatever they do, `/healthz` and `/offer` stay reachable for
//! everyone else, and what they held is closed and counted.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use support::{Relay, WAIT};

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.0/8 is all local).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{from}:0").parse().expect("address"))
        .expect("bind the client address");
    socket.connect(addr).await.expect("connect")
}

/// Waits until the server closes `stream` (EOF or reset); panics if it stays open past WAIT.
async fn closed_by_server(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open");
}

async fn healthz_from(from: &str, addr: SocketAddr) -> String {
    let mut stream = connect_from(from, addr).await;
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_string(&mut answer)).await;
    answer
}

#[tokio::test]
async fn idle_slow_and_crowding_clients_are_closed_and_never_starve_others() {
    let config = std::env::temp_dir().join(format!("lf-http-limits-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        "http: {max_connections: 64, max_connections_per_ip: 8, header_read_timeout_secs: 1, idle_timeout_secs: 2}\n",
    )
    .expect("config");
    let relay = Relay::serve(&["--config", config.to_str().expect("path")]).await;
    let addr = relay.http;

    // A crowd from one address: 8 idle connections fill its share.
    let mut crowd = Vec::new();
    for _ in 0..8 {
        crowd.push(connect_from("127.0.0.3", addr).await);
    }
    relay.wait_for_metric("livefilter_http_connections", 8.0).await;
    // The 9th from the same address is closed at once.
    let mut ninth = connect_from("127.0.0.3", addr).await;
    closed_by_server(&mut ninth).await;
    relay
        .wait_for_metric(
            "livefilter_http_connections_refused_total{limit=\"max_connections_per_ip\"}",
            1.0,
        )
        .await;
    // A slowloris: one header byte at a time, never finishing.
    let mut slow = connect_from("127.0.0.4", addr).await;
    let slowloris = async {
        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: ".iter().cycle() {
            if slow.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let others = healthz_from("127.0.0.5", addr).await;

    assert!(others.starts_with("HTTP/1.1 200"), "another client is served: {others}");
    tokio::time::timeout(WAIT, slowloris)
        .await
        .expect("the slowloris is cut off (header read timeout)");
    for stream in &mut crowd {
        closed_by_server(stream).await;
    }
    let after = healthz_from("127.0.0.3", addr).await;
    assert!(
        after.starts_with("HTTP/1.1 200"),
        "the crowd's address is served again: {after}"
    );
}
