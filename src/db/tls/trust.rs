//! Whom to trust for PostgreSQL's certificate: the rustls connector for an
//! `sslmode` and its roots (the OS store, loaded once, or a PEM file, read
//! on every connection), and the verifier behind `verify-ca`, which checks
//! the chain but not the host name.
//!
//! Invariant: whenever TLS is used the server certificate is verified;
//! nothing here accepts a certificate that does not lead to a trusted root.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::ConnectError;
use super::params::{Roots, SslMode};

/// The rustls connector for `mode` trusting `roots`.
pub(super) fn connector(mode: SslMode, roots: &Roots) -> Result<MakeRustlsConnect, ConnectError> {
    ensure_crypto_provider();
    match roots {
        Roots::System => system_connector(),
        Roots::File(path) => {
            let store = Arc::new(load_roots(path)?);
            let config = if mode == SslMode::VerifyCa {
                let verifier = WebPkiServerVerifier::builder(store)
                    .build()
                    .map_err(|e| ConnectError::TlsSetup(e.to_string()))?;
                ClientConfig::builder()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
                    .with_no_client_auth()
            } else {
                ClientConfig::builder()
                    .with_root_certificates(store)
                    .with_no_client_auth()
            };
            Ok(MakeRustlsConnect::new(config))
        }
    }
}

/// `main` installs aws-lc-rs as the process's provider; tests and tools that
/// do not start through `main` get the same one here.
fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// The OS roots, loaded once per process: the store holds hundreds of files
/// and the pool opens connections repeatedly.
fn system_connector() -> Result<MakeRustlsConnect, ConnectError> {
    static SYSTEM: OnceLock<Result<MakeRustlsConnect, String>> = OnceLock::new();
    SYSTEM
        .get_or_init(|| match MakeRustlsConnect::with_native_certs() {
            Ok((tls, errors)) => {
                for error in errors {
                    tracing::debug!(%error, "skipped an unreadable OS root certificate");
                }
                Ok(tls)
            }
            Err(errors) if errors.is_empty() => Err("the store is empty".to_string()),
            Err(errors) => Err(errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")),
        })
        .clone()
        .map_err(ConnectError::NoSystemRoots)
}

/// Read on every connection, so that a rotated CA file takes effect without
/// a restart.
fn load_roots(path: &Path) -> Result<RootCertStore, ConnectError> {
    let pem = std::fs::read(path).map_err(|source| ConnectError::ReadRootCert {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| ConnectError::BadRootCert {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".to_string()));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| bad(format!("a certificate cannot be a trust anchor ({e})")))?;
    }
    Ok(store)
}

/// libpq's `verify-ca`: the chain must lead to a trusted root; the name in
/// the certificate may differ from the host connected to.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            // The webpki verifier checks the name only once the chain has
            // verified, so a name error means the chain is good.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_root_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let Err(err) = connector(SslMode::Require, &Roots::File(missing.clone())) else {
            panic!("a missing sslrootcert must be refused");
        };
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("cannot read sslrootcert {}", missing.display())),
            "{text}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let Err(err) = connector(SslMode::Require, &Roots::File(empty)) else {
            panic!("an empty sslrootcert must be refused");
        };
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }
}
