//! Bad input gets a clear error, never a hang or a panic.

mod common;

use std::time::{Duration, Instant};

use bullpen_conn::{ConnEvent, Connection, Error, RedisOptions};
use bullpen_testkit::{free_port, FakeBehaviour, FakeServer, RedisServer};
use common::{opts, wait_event};

#[test]
fn malformed_urls_and_unknown_schemes() {
    for url in [
        "",
        "localhost:6379",
        "http://localhost:6379",
        "redis://localhost:65536",
        "redis://localhost:-1",
        "redis://localhost/notadb",
        "redis://:pw@",
    ] {
        let err = RedisOptions::from_url(url).expect_err(url);
        assert!(
            matches!(err, Error::InvalidUrl { .. } | Error::InvalidOptions { .. }),
            "{url}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_where_nothing_listens() {
    let port = free_port().expect("port");
    let t = Instant::now();
    let err = Connection::connect(opts(&format!("redis://127.0.0.1:{port}")).producer())
        .await
        .expect_err("nothing listens");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let inner = err.last_connect_error().expect("says why");
    assert!(matches!(inner, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_where_something_else_answers() {
    let http = FakeServer::start(FakeBehaviour::Http).await.expect("fake");
    let err = Connection::connect(opts(&http.url()).worker())
        .await
        .expect_err("HTTP is not redis");
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("did not answer like a redis server"),
        "{err}"
    );

    let silent = FakeServer::start(FakeBehaviour::Silent)
        .await
        .expect("fake");
    let t = Instant::now();
    let err = Connection::connect(
        opts(&silent.url())
            .producer()
            .with_connect_timeout(Duration::from_millis(500)),
    )
    .await
    .expect_err("silence is not redis");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(
        matches!(err.last_connect_error(), Some(Error::ConnectTimeout { .. })),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_an_auth_error_on_every_retry() {
    let server = RedisServer::builder()
        .password("right")
        .start()
        .expect("redis-server");
    let url = format!("redis://:wrong@127.0.0.1:{}", server.port());
    let err = Connection::connect(opts(&url).worker())
        .await
        .expect_err("wrong password");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(!err.to_string().contains("wrong"), "no secret in: {err}");

    let conn = Connection::connect(opts(&url).worker().with_lazy_connect(true))
        .await
        .expect("lazy");
    let mut events = conn.events();
    let c = conn.clone();
    let call = tokio::spawn(async move { c.ping().await });
    for _ in 0..3 {
        let e = wait_event(&mut events, Duration::from_secs(5), |e| {
            matches!(e, ConnEvent::Error { .. })
        })
        .await;
        assert!(
            matches!(
                e,
                ConnEvent::Error {
                    error: Error::Auth { .. }
                }
            ),
            "{e:?}"
        );
    }
    call.abort();

    // No password at all where one is required: NOAUTH, reported as an auth error.
    let err = Connection::connect(opts(&server.url()).producer())
        .await
        .expect_err("no password");
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    assert!(err.to_string().contains("NOAUTH"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_out_of_range() {
    let server = RedisServer::start().expect("redis-server");
    let err = Connection::connect(opts(&format!("{}/99", server.url())).worker())
        .await
        .expect_err("db 99");
    assert!(
        matches!(err, Error::InvalidOptions { field: "db", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("out of range"), "{err}");
}
