//! TLS for the control plane (rustls through tonic): the coordinator serves with a
//! certificate and key from PEM files (e.g. a mounted Kubernetes TLS secret), workers verify
//! it against a CA certificate and connect to an `https://` URL.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The environment variable naming the CA certificate (PEM) workers trust.
pub const TLS_CA_ENV: &str = "LGAF_TLS_CA";

/// Makes ring rustls' process-wide provider (rustls cannot pick one when two are linked).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("reading the TLS {what} {}: {e}", path.display()))?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Err(format!(
            "the TLS {what} {} is not PEM (expected it to start with -----BEGIN)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// The server side: this certificate (chain) and its private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, String> {
    install_crypto_provider();
    let identity = Identity::from_pem(read("certificate", cert)?, read("key", key)?);
    Ok(ServerTlsConfig::new().identity(identity))
}

/// The client side: trust only certificates signed by the CA in `ca`.
pub fn client_config(ca: &Path) -> Result<ClientTlsConfig, String> {
    install_crypto_provider();
    Ok(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA certificate", ca)?)))
}
