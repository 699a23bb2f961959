//! TLS for the control plane (rustls through tonic): the coordinator serves with a
//! certificate and key from PEM files (e.g. a mounted Kubernetes TLS secret), workers verify
//! it against a CA certificate and connect to an `https://` URL.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The environment variable naming the CA certificate (PEM) workers trust.
pub const TLS_CA_ENV: &str = "LGAF_TLS_CA";

/// A certificate or key file that cannot be used; the message names the file and what it
/// is for.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the TLS {what} {}: {source}", path.display())]
    Read {
        /// "certificate", "key" or "CA certificate".
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the TLS {what} {} is not PEM (expected it to start with -----BEGIN)",
        path.display()
    )]
    NotPem { what: &'static str, path: PathBuf },
}

/// Makes ring rustls' process-wide provider (rustls cannot pick one when two are linked).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err: a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The PEM file `path`, the TLS `what`. Only the armour is checked here: tonic parses the
/// contents when the server starts or the client connects.
fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

/// The server side: this certificate (chain) and its private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsError> {
    install_crypto_provider();
    let identity = Identity::from_pem(read_pem("certificate", cert)?, read_pem("key", key)?);
    Ok(ServerTlsConfig::new().identity(identity))
}

/// The client side: trust only certificates signed by the CA in `ca`.
pub fn client_config(ca: &Path) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    let ca = Certificate::from_pem(read_pem("CA certificate", ca)?);
    Ok(ClientTlsConfig::new().ca_certificate(ca))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file_and_what_was_expected() {
        let dir = std::env::temp_dir().join(format!("lgaf-proto-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("cert.pem");
        let der = dir.join("key.der");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(&der, [0x30, 0x82]).unwrap();
        let missing = dir.join("missing.pem");

        let e = client_config(&missing).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    what: "CA certificate",
                    ..
                }
            ),
            "{e:?}"
        );
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "reading the TLS CA certificate {}: ",
                missing.display()
            )),
            "{text}"
        );
        assert!(std::error::Error::source(&e).is_some());

        let e = server_config(&pem, &der).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the TLS key {} is not PEM (expected it to start with -----BEGIN)",
                der.display()
            )
        );
        assert!(server_config(&pem, &pem).is_ok());
        assert!(client_config(&pem).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
