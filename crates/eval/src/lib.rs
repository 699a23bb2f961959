//! Evaluation for LGAF-Train, without libtorch.
//!
//! * [`pickle`]: a safe reader (and a writer) for the pickles that
//!   verification files are made of.
//! * [`bin_file`]: verification `.bin` files (`lfw.bin`, `cfp_fp.bin`, ...):
//!   [`VerificationBin`] and [`write_bin`].
//! * [`verification`]: insightface's verification protocol: accuracy over 10
//!   folds and TAR at FAR 1e-3, from embeddings or pair distances.
//! * [`retrieval`]: identification of probes against a gallery with
//!   distractors: CMC at ranks 1, 5 and 20.

pub mod bin_file;
mod error;
pub mod pickle;
pub mod retrieval;
pub mod verification;

pub use bin_file::{write_bin, VerificationBin};
pub use error::Error;
