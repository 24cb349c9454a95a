//! The relay binary at startup: HTTPS when given a certificate, and precise errors (never a
//! panic) for configuration that cannot work.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::free_port;

fn relay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_livefilter-relay"));
    cmd.env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs the relay to its exit (bounded) and returns (success, stderr).
fn run_to_exit(args: &[&str]) -> (bool, String) {
    let output = relay().args(args).output().expect("relay runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_config_key_is_named_and_the_relay_exits_non_zero() {
    let dir = std::env::temp_dir().join(format!("lf-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("relay.yaml");
    std::fs::write(&path, "video: {codec: vp8, bitrat_kbps: 5}\n").unwrap();

    let (ok, stderr) = run_to_exit(&["serve", "--config", path.to_str().unwrap()]);

    assert!(!ok);
    assert!(stderr.contains("bitrat_kbps"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_tls_certificate_without_a_key_is_refused() {
    let (ok, stderr) = run_to_exit(&["serve", "--tls-cert", "/nonexistent/cert.pem"]);

    assert!(!ok);
    assert!(
        stderr.contains("offer.tls_cert and offer.tls_key go together"),
        "{stderr}"
    );
}

#[test]
fn a_missing_font_is_named() {
    let port = free_port().to_string();
    let (ok, stderr) = run_to_exit(&[
        "test-pattern",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--whip-url",
        "http://127.0.0.1:9/whip/x",
        "--font",
        "/nonexistent/font.ttf",
    ]);

    assert!(!ok);
    assert!(stderr.contains("/nonexistent/font.ttf"), "{stderr}");
}

#[test]
fn a_test_pattern_without_any_output_says_how_to_configure_one() {
    let (ok, stderr) = run_to_exit(&["test-pattern", "--listen", &format!("127.0.0.1:{}", free_port())]);

    assert!(!ok);
    assert!(stderr.contains("no output configured"), "{stderr}");
}

#[test]
fn a_busy_listen_port_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    let (ok, stderr) = run_to_exit(&["serve", "--listen", &addr, "--udp-addr", "127.0.0.1:0"]);

    assert!(!ok);
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

#[test]
fn filter_setup_errors_are_named_before_anything_connects() {
    let listen = format!("127.0.0.1:{}", free_port());
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "--filter",
                "background-blur",
                "--onnxruntime",
                "/nonexistent/libonnxruntime.so",
            ],
            "cannot load ONNX Runtime from /nonexistent/libonnxruntime.so: no such file",
        ),
        (
            &["--filter", "onnx", "--model", "/nonexistent/style.onnx"],
            "filter onnx: model file /nonexistent/style.onnx does not exist",
        ),
        (&["--filter", "onnx"], "filter onnx needs filter.model"),
        (
            &["--filter", "face-blur", "--filter-params", r#"{"mode": "smudge"}"#],
            "filter face-blur: unknown variant `smudge`, expected `pixelate` or `blur`",
        ),
    ];
    for (extra, expected) in cases {
        let mut args = vec!["serve", "--listen", &listen, "--udp-addr", "127.0.0.1:0"];
        args.extend_from_slice(extra);

        let (ok, stderr) = run_to_exit(&args);

        assert!(!ok, "{extra:?} started");
        assert!(stderr.contains(expected), "{extra:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[tokio::test]
async fn with_a_certificate_and_key_the_relay_serves_https() {
    let dir = std::env::temp_dir().join(format!("lf-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = relay()
        .args(["serve", "--listen", &addr, "--udp-addr", "127.0.0.1:0"])
        .args(["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        match client.get(format!("https://{addr}/healthz")).send().await {
            Ok(r) => break r.text().await.unwrap(),
            Err(e) => {
                assert!(Instant::now() < deadline, "no HTTPS answer: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let plain = reqwest::get(format!("http://{addr}/healthz")).await;
    let _ = child.kill();
    let _ = child.wait();

    assert_eq!(body, "ok");
    assert!(
        plain.map(|r| !r.status().is_success()).unwrap_or(true),
        "plain HTTP must not be served"
    );
}
