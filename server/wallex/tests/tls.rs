//! HTTPS through the real binary: `--tls-cert`/`--tls-key` serve the API over TLS with HTTP/2
//! and HTTP/1.1 offered by ALPN, and SIGHUP makes the server present a renewed certificate without
//! a restart.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh self-signed certificate for `localhost`, written to `dir` as `cert.pem` and
/// `key.pem`; its DER, for a client to trust.
fn certificate(dir: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), made.signing_key.serialize_pem()).unwrap();
    made.cert.der().clone()
}

/// A TLS connection trusting `trusted` alone and offering `alpn`: the negotiated protocol and the
/// stream, or why the handshake failed.
async fn connect(
    port: u16,
    trusted: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<(Option<Vec<u8>>, tokio_rustls::client::TlsStream<tokio::net::TcpStream>)> {
    let mut roots = RootCertStore::empty();
    roots.add(trusted.clone()).unwrap();
    let mut config = ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let stream = TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    let protocol = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    Ok((protocol, stream))
}

/// `GET /health/live` over an HTTP/2 or HTTP/1.1 connection: the status.
async fn live(stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>, http2: bool) -> u16 {
    let request = hyper::Request::get("https://localhost/health/live")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = if http2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        sender.send_request(request).await.unwrap()
    };
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await.unwrap();
    status
}

#[tokio::test]
async fn the_api_is_served_over_tls_with_http2_and_a_renewed_certificate_is_loaded_on_sighup() {
    let dir: PathBuf = std::env::temp_dir().join(format!("wallex-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = certificate(&dir);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wallex"));
    for name in ["DATABASE_URL", "KAFKA_BROKERS", "PORT", "RUST_LOG"] {
        command.env_remove(name);
    }
    let child = command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(dir.join("cert.pem"))
        .arg("--tls-key")
        .arg(dir.join("key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let started = Instant::now();
    let (protocol, stream) = loop {
        match connect(port, &first, &[b"h2", b"http/1.1"]).await {
            Ok(connected) => break connected,
            Err(error) => assert!(started.elapsed() < Duration::from_secs(20), "no TLS server: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(protocol.as_deref(), Some(&b"h2"[..]), "HTTP/2 is chosen when offered");
    assert_eq!(live(stream, true).await, 200);
    let (protocol, stream) = connect(port, &first, &[b"http/1.1"]).await.unwrap();
    assert_eq!(protocol.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(live(stream, false).await, 200);

    // Plain HTTP on the TLS port gets no answer it could mistake for one.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/health/live")).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    // Renewed on disk, then SIGHUP: new connections get the new certificate.
    let second = certificate(&dir);
    assert!(connect(port, &second, &[b"h2"]).await.is_err(), "not before the signal");
    let hangup = Command::new("kill").args(["-HUP", &server.0.id().to_string()]).status().unwrap();
    assert!(hangup.success());
    let signalled = Instant::now();
    let stream = loop {
        if let Ok((_, stream)) = connect(port, &second, &[b"h2"]).await {
            break stream;
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(live(stream, true).await, 200);
    assert!(connect(port, &first, &[b"h2"]).await.is_err(), "the old certificate is gone");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
