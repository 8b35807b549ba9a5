//! TLS with rustls (ring provider): the system roots or a given CA, and optionally a client
//! certificate for mutual TLS.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};
use crate::options::{RedisOptions, TlsOptions};

fn tls_error(opts: &RedisOptions, detail: impl std::fmt::Display) -> Error {
    Error::Tls {
        target: opts.redacted_target(),
        detail: detail.to_string(),
    }
}

/// Builds the client configuration. Reads the PEM files every time, so that rotated
/// certificates are picked up at the next reconnect.
fn client_config(opts: &RedisOptions, tls: &TlsOptions) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(opts, e))?;
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_error(opts, format!("reading CA file {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    tls_error(opts, format!("parsing CA file {}: {e}", path.display()))
                })?;
                roots
                    .add(cert)
                    .map_err(|e| tls_error(opts, format!("CA file {}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    if roots.is_empty() {
        return Err(tls_error(
            opts,
            "no trusted CA certificates: give `tls_ca` or install the system roots",
        ));
    }
    let builder = builder.with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| {
                    tls_error(opts, format!("client certificate {}: {e}", cert.display()))
                })?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| tls_error(opts, format!("client key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(opts, e))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Runs the TLS handshake over an open TCP stream.
pub(crate) async fn wrap(
    opts: &RedisOptions,
    tls: &TlsOptions,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>> {
    let config = client_config(opts, tls)?;
    let name = tls.server_name.as_deref().unwrap_or(host).to_owned();
    let name = ServerName::try_from(name).map_err(|e| tls_error(opts, e))?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(
            |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidMessage(_)) => tls_error(
                    opts,
                    format!("the server did not speak TLS ({e}); is this a plain redis port?"),
                ),
                Some(inner) => tls_error(opts, format!("handshake failed: {inner}")),
                // A plain I/O failure mid-handshake (the server went away) is worth retrying.
                None => Error::Connect {
                    target: opts.redacted_target(),
                    source: Arc::new(e),
                },
            },
        )
}
