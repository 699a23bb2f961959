//! How a store moves bytes: object_store's retry and timeout settings (S3) and the
//! multipart split of large objects, read from `LGAF_STORE_*` variables beside the `AWS_*`
//! ones, so that the coordinator, its workers and the CLI, which all open the same store,
//! are set alike by one environment.
//!
//! A request that fails for a reason worth retrying (a 5xx such as 503 SlowDown, a 429, a
//! refused connection, a reset on a request that may be sent twice) is sent again after a
//! jittered, growing pause, up to `max_retries` times and `retry_timeout` in all. object_store
//! logs each retry ("... backing off for ... seconds, retry N of M"): those lines are the
//! counts.
//!
//! The defaults ride out a store that is away for up to `retry_timeout` (3 minutes);
//! object_store's own give up within seconds. Its pause is drawn at random between the first
//! pause and `base` times the previous one, so it grows slowly and unevenly, and a count of
//! retries is a poor bound on time: against a server that was down, its 10 retries (base 2,
//! 50 ms first pause) were spent in 0.9 s, and 15 at base 3 from 100 ms in 15 s
//! (`worker/tests/storage_faults.rs`). So time bounds the retries here, and the count (100)
//! only backs it up.

use std::collections::HashMap;
use std::time::Duration;

use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use crate::error::{Result, StoreError};
use crate::store::{DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, MIN_PART_SIZE};

/// Retries of one request before it fails (default 100; `retry_timeout` ends them first).
pub const MAX_RETRIES_ENV: &str = "LGAF_STORE_MAX_RETRIES";
/// Seconds after a request's first try past which it is not tried again (default 180).
pub const RETRY_TIMEOUT_ENV: &str = "LGAF_STORE_RETRY_TIMEOUT_SECS";
/// The first pause before a retry, in milliseconds (default 100); later ones grow, jittered.
pub const BACKOFF_INIT_ENV: &str = "LGAF_STORE_BACKOFF_INIT_MS";
/// The longest pause before a retry, in seconds (default 15).
pub const BACKOFF_MAX_ENV: &str = "LGAF_STORE_BACKOFF_MAX_SECS";
/// Seconds one request (body included) may take (default 30): more than the largest single
/// request takes at the slowest bandwidth expected, that is an object just under the
/// multipart threshold, or a part.
pub const REQUEST_TIMEOUT_ENV: &str = "LGAF_STORE_REQUEST_TIMEOUT_SECS";
/// Seconds to open a connection (default 5).
pub const CONNECT_TIMEOUT_ENV: &str = "LGAF_STORE_CONNECT_TIMEOUT_SECS";
/// Objects at least this many bytes go up in parts (default 64 MiB).
pub const MULTIPART_THRESHOLD_ENV: &str = "LGAF_STORE_MULTIPART_THRESHOLD_BYTES";
/// Bytes a part (default 16 MiB; S3 requires at least 5 MiB).
pub const PART_SIZE_ENV: &str = "LGAF_STORE_PART_SIZE_BYTES";

/// How much longer than the last a pause may be (see the module header).
const BACKOFF_BASE: f64 = 3.0;

/// The retry, timeout and multipart settings of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferSettings {
    pub max_retries: usize,
    pub retry_timeout: Duration,
    pub backoff_init: Duration,
    pub backoff_max: Duration,
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    pub multipart_threshold: usize,
    pub part_size: usize,
}

impl Default for TransferSettings {
    /// Retries for up to 3 minutes (see the module header); object_store's timeouts.
    fn default() -> Self {
        Self {
            max_retries: 100,
            retry_timeout: Duration::from_secs(180),
            backoff_init: Duration::from_millis(100),
            backoff_max: Duration::from_secs(15),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            part_size: DEFAULT_PART_SIZE,
        }
    }
}

impl TransferSettings {
    /// The defaults, overridden by whichever `LGAF_STORE_*` variables `env` sets; a value
    /// that is not a whole number in range is an error naming the variable (`url` is the
    /// store it was for).
    pub fn from_env(url: &str, env: &HashMap<String, String>) -> Result<Self> {
        let number = |name: &str, max: u64| -> Result<Option<u64>> {
            let Some(text) = env.get(name) else {
                return Ok(None);
            };
            match text.trim().parse::<u64>() {
                Ok(n) if n <= max => Ok(Some(n)),
                _ => Err(StoreError::InvalidConfig {
                    url: url.to_string(),
                    reason: format!("{name}={text:?}: expected a whole number from 0 to {max}"),
                }),
            }
        };
        // A day bounds every duration: far beyond any sensible setting, and far from overflow.
        const DAY: u64 = 24 * 3600;
        // A misspelt name would otherwise be ignored without a word.
        let known = [
            MAX_RETRIES_ENV,
            RETRY_TIMEOUT_ENV,
            BACKOFF_INIT_ENV,
            BACKOFF_MAX_ENV,
            REQUEST_TIMEOUT_ENV,
            CONNECT_TIMEOUT_ENV,
            MULTIPART_THRESHOLD_ENV,
            PART_SIZE_ENV,
        ];
        let mut unknown: Vec<&String> = env
            .keys()
            .filter(|k| k.starts_with("LGAF_STORE_") && !known.contains(&k.as_str()))
            .collect();
        unknown.sort();
        if let Some(name) = unknown.first() {
            return Err(StoreError::InvalidConfig {
                url: url.to_string(),
                reason: format!("{name} is not a store setting; known: {}", known.join(", ")),
            });
        }
        let mut settings = Self::default();
        if let Some(n) = number(MAX_RETRIES_ENV, 1000)? {
            settings.max_retries = n as usize;
        }
        let secs = |name, slot: &mut Duration| -> Result<()> {
            if let Some(n) = number(name, DAY)? {
                *slot = Duration::from_secs(n);
            }
            Ok(())
        };
        secs(RETRY_TIMEOUT_ENV, &mut settings.retry_timeout)?;
        secs(BACKOFF_MAX_ENV, &mut settings.backoff_max)?;
        secs(REQUEST_TIMEOUT_ENV, &mut settings.request_timeout)?;
        secs(CONNECT_TIMEOUT_ENV, &mut settings.connect_timeout)?;
        if let Some(n) = number(BACKOFF_INIT_ENV, DAY * 1000)? {
            settings.backoff_init = Duration::from_millis(n);
        }
        // S3's largest part, 5 GiB, bounds both.
        if let Some(n) = number(MULTIPART_THRESHOLD_ENV, 5 << 30)? {
            settings.multipart_threshold = n as usize;
        }
        if let Some(n) = number(PART_SIZE_ENV, 5 << 30)? {
            settings.part_size = n as usize;
        }
        let invalid = |reason: String| StoreError::InvalidConfig {
            url: url.to_string(),
            reason,
        };
        if settings.part_size < MIN_PART_SIZE {
            return Err(invalid(format!(
                "{PART_SIZE_ENV}={}: S3 requires parts of at least {MIN_PART_SIZE} bytes",
                settings.part_size
            )));
        }
        if settings.multipart_threshold == 0 {
            return Err(invalid(format!(
                "{MULTIPART_THRESHOLD_ENV}=0: give at least 1"
            )));
        }
        for (name, value) in [
            (REQUEST_TIMEOUT_ENV, settings.request_timeout),
            (CONNECT_TIMEOUT_ENV, settings.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(invalid(format!(
                    "{name}=0: a request needs some time; give at least 1"
                )));
            }
        }
        Ok(settings)
    }

    pub(crate) fn retry_config(&self) -> RetryConfig {
        RetryConfig {
            backoff: BackoffConfig {
                init_backoff: self.backoff_init,
                max_backoff: self.backoff_max.max(self.backoff_init),
                base: BACKOFF_BASE,
            },
            max_retries: self.max_retries,
            retry_timeout: self.retry_timeout,
        }
    }

    pub(crate) fn client_options(&self) -> ClientOptions {
        ClientOptions::new()
            .with_timeout(self.request_timeout)
            .with_connect_timeout(self.connect_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unset_variables_keep_the_defaults_and_set_ones_override_them() {
        let url = "s3://b/p";
        assert_eq!(
            TransferSettings::from_env(url, &env(&[])).unwrap(),
            TransferSettings::default()
        );
        let settings = TransferSettings::from_env(
            url,
            &env(&[
                (MAX_RETRIES_ENV, "3"),
                (RETRY_TIMEOUT_ENV, "20"),
                (BACKOFF_INIT_ENV, "50"),
                (BACKOFF_MAX_ENV, "2"),
                (REQUEST_TIMEOUT_ENV, " 60 "),
                (CONNECT_TIMEOUT_ENV, "1"),
                (MULTIPART_THRESHOLD_ENV, "1048576"),
                (PART_SIZE_ENV, "5242880"),
            ]),
        )
        .unwrap();
        assert_eq!(
            settings,
            TransferSettings {
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
                backoff_init: Duration::from_millis(50),
                backoff_max: Duration::from_secs(2),
                request_timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(1),
                multipart_threshold: 1 << 20,
                part_size: 5 << 20,
            }
        );
        let retry = settings.retry_config();
        assert_eq!(retry.max_retries, 3);
        assert_eq!(retry.backoff.init_backoff, Duration::from_millis(50));
    }

    #[test]
    fn a_bad_value_names_its_variable_and_what_was_expected() {
        for (name, value) in [
            (MAX_RETRIES_ENV, "-1"),
            (MAX_RETRIES_ENV, "1001"),
            (RETRY_TIMEOUT_ENV, "3m"),
            (BACKOFF_INIT_ENV, ""),
            (REQUEST_TIMEOUT_ENV, "0"),
            (CONNECT_TIMEOUT_ENV, "0"),
            (PART_SIZE_ENV, "6442450944"),
            (PART_SIZE_ENV, "1024"),
            (MULTIPART_THRESHOLD_ENV, "0"),
            ("LGAF_STORE_RETRY_TIMEOUT", "60"),
        ] {
            let e = TransferSettings::from_env("s3://b/p", &env(&[(name, value)])).unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(e, StoreError::InvalidConfig { .. }) && text.contains(name),
                "{name}={value}: {text}"
            );
            assert!(text.contains("s3://b/p"), "{text}");
        }
    }
}
