//! The HTTPS side: the certificate and key loaded into a rustls server
//! configuration that offers HTTP/1.1 only.
//!
//! Invariant: ALPN offers `http/1.1` alone, because the connection loop
//! serves HTTP/1.1 (where the header deadline and size limit are enforced);
//! a browser that also speaks h2 then picks HTTP/1.1.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{ServeError, TlsFiles};

/// The rustls configuration for `files`.
pub(super) fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, ServeError> {
    let error = |reason: String| ServeError::Tls {
        cert: files.cert.display().to_string(),
        key: files.key.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
    };
    let certs = read_certificates(&files.cert).map_err(error)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|err| error(format!("no private key in {}: {err}", files.key.display())))?;
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|err| error(format!("the certificate and key do not make a pair: {err}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|err| format!("cannot read certificates from {}: {err}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}
