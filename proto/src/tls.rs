//! TLS for the control plane (rustls through tonic): the coordinator serves with a
//! certificate and key from PEM files (e.g. a mounted Kubernetes TLS secret), workers verify
//! it against a CA certificate and connect to an `https://` URL. With mutual TLS the
//! coordinator also asks every client for a certificate signed by the job's client CA, and
//! workers present one ([`ClientTlsFiles::identity`]).

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// The environment variable naming the CA certificate (PEM) workers trust.
pub const TLS_CA_ENV: &str = "LGAF_TLS_CA";
/// The environment variable naming the certificate (PEM) a worker presents to a
/// coordinator that asks for one (mutual TLS).
pub const TLS_CLIENT_CERT_ENV: &str = "LGAF_TLS_CLIENT_CERT";
/// The environment variable naming the private key (PEM) of that certificate.
pub const TLS_CLIENT_KEY_ENV: &str = "LGAF_TLS_CLIENT_KEY";

/// A certificate and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a client needs to reach a TLS server: the CA it verifies the server with, and the
/// certificate it presents if the server asks for one. Both unset: plain HTTP/2.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTlsFiles {
    pub ca: Option<PathBuf>,
    pub identity: Option<IdentityFiles>,
}

impl ClientTlsFiles {
    /// The variables that hand these files to a child process (unset ones removed, so a
    /// child never inherits another job's).
    pub fn child_env(&self) -> [(&'static str, Option<&Path>); 3] {
        let identity = self.identity.as_ref();
        [
            (TLS_CA_ENV, self.ca.as_deref()),
            (TLS_CLIENT_CERT_ENV, identity.map(|i| i.cert.as_path())),
            (TLS_CLIENT_KEY_ENV, identity.map(|i| i.key.as_path())),
        ]
    }
}

/// A certificate or key file that cannot be used; the message names the file and what it
/// is for.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the TLS {what} {}: {source}", path.display())]
    Read {
        /// "certificate", "key", "CA certificate", "client CA certificate", "client
        /// certificate" or "client key".
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

/// The server side: this certificate (chain) and its private key; with `client_ca`, every
/// client must present a certificate signed by that CA (mutual TLS), or its handshake fails.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<ServerTlsConfig, TlsError> {
    install_crypto_provider();
    let identity = Identity::from_pem(read_pem("certificate", cert)?, read_pem("key", key)?);
    let config = ServerTlsConfig::new().identity(identity);
    Ok(match client_ca {
        Some(ca) => config.client_ca_root(Certificate::from_pem(read_pem(
            "client CA certificate",
            ca,
        )?)),
        None => config,
    })
}

/// The client side: trust only certificates signed by the CA in `ca`, and present
/// `identity` to a server that asks for a client certificate.
pub fn client_config(
    ca: &Path,
    identity: Option<&IdentityFiles>,
) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_pem("CA certificate", ca)?));
    Ok(match identity {
        Some(files) => config.identity(Identity::from_pem(
            read_pem("client certificate", &files.cert)?,
            read_pem("client key", &files.key)?,
        )),
        None => config,
    })
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

        let e = client_config(&missing, None).unwrap_err();
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

        let e = server_config(&pem, &der, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the TLS key {} is not PEM (expected it to start with -----BEGIN)",
                der.display()
            )
        );
        assert!(server_config(&pem, &pem, None).is_ok());
        assert!(server_config(&pem, &pem, Some(&pem)).is_ok());
        let e = server_config(&pem, &pem, Some(&der)).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::NotPem {
                    what: "client CA certificate",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(client_config(&pem, None).is_ok());
        let identity = |cert: &Path, key: &Path| IdentityFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        assert!(client_config(&pem, Some(&identity(&pem, &pem))).is_ok());
        let e = client_config(&pem, Some(&identity(&pem, &der))).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::NotPem {
                    what: "client key",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = client_config(&pem, Some(&identity(&missing, &pem))).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    what: "client certificate",
                    ..
                }
            ),
            "{e:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
