//! TLS against a real redis-server with certificates made at run time.

mod common;

use bullpen_conn::{redis, Connection, Error, RedisOptions};
use bullpen_testkit::RedisServer;
use common::{get, opts};

fn tls_url(server: &RedisServer, query: &str) -> String {
    format!(
        "rediss://127.0.0.1:{}{query}",
        server.tls_port().expect("tls port")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_given_ca() {
    let server = RedisServer::builder()
        .tls(false)
        .start()
        .expect("redis-server");
    let (ca, _, _) = server.tls_files();
    let url = tls_url(&server, &format!("?tls_ca={}", ca.display()));
    let conn = Connection::connect(opts(&url).producer())
        .await
        .expect("TLS connect");
    let _: () = conn
        .query(redis::cmd("SET").arg("k").arg("over tls"))
        .await
        .expect("SET");
    assert_eq!(get(&conn, "k").await.as_deref(), Some("over tls"));
    // The same name check applies whichever way the host is written.
    let url = format!(
        "rediss://localhost:{}?tls_ca={}",
        server.tls_port().expect("tls port"),
        ca.display()
    );
    Connection::connect(opts(&url).producer())
        .await
        .expect("TLS connect by host name");
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_needs_the_client_certificate() {
    let server = RedisServer::builder()
        .tls(true)
        .start()
        .expect("redis-server");
    let (ca, cert, key) = server.tls_files();
    let url = tls_url(
        &server,
        &format!(
            "?tls_ca={}&tls_cert={}&tls_key={}",
            ca.display(),
            cert.display(),
            key.display()
        ),
    );
    let conn = Connection::connect(opts(&url).producer())
        .await
        .expect("mutual TLS connect");
    conn.ping().await.expect("PING");

    let without = tls_url(&server, &format!("?tls_ca={}", ca.display()));
    let err = Connection::connect(opts(&without).producer())
        .await
        .expect_err("the server requires a client certificate");
    assert!(
        matches!(
            err.last_connect_error().unwrap_or(&err),
            Error::Tls { .. } | Error::Connect { .. }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_or_a_plain_port_is_a_tls_error() {
    let server = RedisServer::builder()
        .tls(false)
        .start()
        .expect("redis-server");
    let other = RedisServer::builder()
        .tls(false)
        .start()
        .expect("redis-server");
    let (wrong_ca, _, _) = other.tls_files();
    let url = tls_url(&server, &format!("?tls_ca={}", wrong_ca.display()));
    let err = Connection::connect(opts(&url).producer())
        .await
        .expect_err("certificate from another CA");
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");

    // TLS client against the plain port: redis takes the ClientHello for an unfinished
    // inline command and waits, so the bound is the connect timeout, and the error says why.
    let (ca, _, _) = server.tls_files();
    let url = format!(
        "rediss://127.0.0.1:{}?tls_ca={}",
        server.port(),
        ca.display()
    );
    let err = Connection::connect(
        opts(&url)
            .producer()
            .with_connect_timeout(std::time::Duration::from_millis(500)),
    )
    .await
    .expect_err("plain port");
    assert!(
        matches!(err.last_connect_error(), Some(Error::ConnectTimeout { .. })),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("TLS client against a plain redis port"),
        "{err}"
    );

    // A CA file that does not exist.
    let mut o = RedisOptions::from_url(&tls_url(&server, "?tls_ca=/nonexistent/ca.pem"))
        .expect("valid url");
    o = o.producer();
    let err = Connection::connect(o).await.expect_err("missing CA file");
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}
