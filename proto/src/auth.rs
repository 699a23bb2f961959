//! The per-job token every worker presents (`authorization: Bearer <token>` metadata), and
//! the tonic interceptors of both sides.
//!
//! The token is a secret: it is never logged, never echoed in a status, and never written
//! to the store (the coordinator keeps it out of the job state). Workers take it from
//! `--token-file` or [`TOKEN_ENV`]; a coordinator that spawns its workers passes it to them
//! in the environment, not on the command line (where `ps` would show it).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The environment variable holding the job token.
pub const TOKEN_ENV: &str = "LGAF_JOB_TOKEN";

const SCHEME: &str = "Bearer ";

/// Why some text is not a job token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    #[error("the job token is empty")]
    Empty,
    #[error("the job token must be printable ASCII without spaces")]
    NotPrintable,
}

/// A job token that cannot be had; the message names where it was looked for.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Text given to [`JobToken::new`].
    #[error(transparent)]
    Invalid(#[from] InvalidToken),

    #[error("reading the job token file {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: {source}", path.display())]
    InvalidInFile {
        path: PathBuf,
        #[source]
        source: InvalidToken,
    },

    #[error("{TOKEN_ENV}: {source}")]
    InvalidInEnv {
        #[source]
        source: InvalidToken,
    },

    /// [`TOKEN_ENV`] is set to something that is not Unicode.
    #[error("{TOKEN_ENV}: {source}")]
    EnvNotUnicode {
        #[source]
        source: std::env::VarError,
    },

    #[error("drawing a job token from /dev/urandom: {source}")]
    Random {
        #[source]
        source: std::io::Error,
    },
}

/// A job token. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct JobToken(Arc<str>);

impl JobToken {
    /// A token from text: surrounding whitespace is dropped; it must be non-empty printable
    /// ASCII (it travels in an HTTP/2 header).
    pub fn new(text: &str) -> Result<Self, TokenError> {
        Self::checked(text).map_err(TokenError::Invalid)
    }

    fn checked(text: &str) -> Result<Self, InvalidToken> {
        let text = text.trim();
        if text.is_empty() {
            return Err(InvalidToken::Empty);
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(InvalidToken::NotPrintable);
        }
        Ok(Self(text.into()))
    }

    /// The token in a file (e.g. a mounted Kubernetes secret).
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::checked(&text).map_err(|source| TokenError::InvalidInFile {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The token in [`TOKEN_ENV`], if set.
    pub fn from_env() -> Result<Option<Self>, TokenError> {
        match std::env::var(TOKEN_ENV) {
            Ok(text) => Self::checked(&text)
                .map(Some)
                .map_err(|source| TokenError::InvalidInEnv { source }),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(source) => Err(TokenError::EnvNotUnicode { source }),
        }
    }

    /// A fresh random token (256 bits from the kernel, hex).
    pub fn generate() -> Result<Self, TokenError> {
        let mut bytes = [0u8; 32];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|source| TokenError::Random { source })?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self(hex.into()))
    }

    /// The secret itself, to hand to a child process.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in time independent of where the first difference is.
    fn matches(&self, presented: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        if ours.len() != presented.len() {
            return false;
        }
        ours.iter()
            .zip(presented)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl fmt::Debug for JobToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JobToken(<redacted>)")
    }
}

/// Server side: refuses every request without the job's token (UNAUTHENTICATED); with no
/// token configured, lets everything through.
#[derive(Clone, Debug)]
pub struct RequireToken(pub Option<JobToken>);

impl RequireToken {
    /// Whether `request` carries the job's token (always, with no token configured).
    pub fn check<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.0 else {
            return Ok(());
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(SCHEME.as_bytes()));
        match presented {
            Some(p) if token.matches(p) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "authorization: the job token is wrong; use this job's token (--token-file \
                 or LGAF_JOB_TOKEN)",
            )),
            None => Err(Status::unauthenticated(
                "authorization: missing; this job requires its token as `authorization: \
                 Bearer <token>` (--token-file or LGAF_JOB_TOKEN)",
            )),
        }
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(&request).map(|()| request)
    }
}

/// Client side: adds the token to every request (nothing when there is none).
#[derive(Clone, Debug)]
pub struct AttachToken(pub Option<JobToken>);

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value: MetadataValue<_> = format!("{SCHEME}{}", token.expose())
                .parse()
                .map_err(|_| Status::internal("the job token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let token = JobToken::new("  s3cret-token\n").unwrap();
        assert_eq!(token.expose(), "s3cret-token");
        assert_eq!(format!("{token:?}"), "JobToken(<redacted>)");
        assert!(JobToken::new(" \n").is_err());
        assert!(JobToken::new("two words").is_err());
        let generated = JobToken::generate().unwrap();
        assert_eq!(generated.expose().len(), 64);
        assert_ne!(generated, JobToken::generate().unwrap());

        let mut server = RequireToken(Some(token.clone()));
        let mut client = AttachToken(Some(token.clone()));
        assert!(server.call(client.call(Request::new(())).unwrap()).is_ok());
        for wrong in [None, Some("s3cret-tokeN"), Some("s3cret"), Some("")] {
            let mut client = AttachToken(wrong.map(|w| JobToken(w.into())));
            let status = server
                .call(client.call(Request::new(())).unwrap())
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            assert!(!status.message().contains("s3cret"), "{}", status.message());
        }
        assert!(RequireToken(None).call(Request::new(())).is_ok());
    }

    #[test]
    fn token_errors_name_where_the_token_was_looked_for() {
        let e = JobToken::new(" \n").unwrap_err();
        assert!(
            matches!(e, TokenError::Invalid(InvalidToken::Empty)),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "the job token is empty");
        assert_eq!(
            JobToken::new("two words").unwrap_err().to_string(),
            "the job token must be printable ASCII without spaces"
        );

        let dir = std::env::temp_dir().join(format!("lgaf-proto-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "\n").unwrap();
        let e = JobToken::from_file(&file).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: the job token is empty", file.display())
        );
        assert!(std::error::Error::source(&e).is_some());
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(JobToken::from_file(&file).unwrap().expose(), "s3cret");
        let missing = dir.join("missing");
        let e = JobToken::from_file(&missing).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "reading the job token file {}: ",
                missing.display()
            )),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            TokenError::InvalidInEnv {
                source: InvalidToken::NotPrintable
            }
            .to_string(),
            "LGAF_JOB_TOKEN: the job token must be printable ASCII without spaces"
        );
    }
}
