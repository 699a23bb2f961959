//! Data sources for LGAF-Train.
//!
//! * [`synth`]: a deterministic synthetic face generator. It is the default
//!   dataset of the CPU demo and of the tests, since no face photographs are
//!   available offline. Identities differ in stable geometry and colour;
//!   per-sample nuisance (pose, lighting, background) and the three nuisance
//!   factors studied by LGAF (missing regions, local deformation, low quality)
//!   vary within an identity.
//! * [`image_folder`]: real face images stored as files, decoded to the
//!   112x112 RGB layout that the models consume.
//! * [`recordio`]: insightface / MXNet RecordIO packs (`train.rec` +
//!   `train.idx`): a memory-mapped reader and an atomic writer, compatible
//!   with MXNet's own.
//! * [`decode`]: JPEG and PNG to 112x112 RGB8, straight into a caller's buffer, with
//!   errors that name the image; and a resize-to-112 path for other sizes.
//! * [`augment`]: AdaFace's training augmentation (crop, low resolution, colour jitter,
//!   flip), in place and deterministic from (seed, epoch, sample index).
//! * [`sampler`]: the per-epoch seeded permutation and its split across ranks.
//! * [`source`]: the [`source::FaceSource`] trait the loader reads, for image folders
//!   and the synthetic faces.
//! * [`npy`]: `.npy` export of embeddings and scores for Python tooling.
//! * [`rng`]: the small deterministic PRNG behind everything random here, so
//!   that generated data is bit-stable across platforms and crate versions.
//!
//! Images are always `Vec<u8>` in HWC order (row-major, RGB interleaved).

pub mod augment;
pub mod decode;
mod error;
pub mod image_folder;
pub mod npy;
pub mod recordio;
pub mod rng;
pub mod sampler;
pub mod source;
pub mod synth;

pub use error::DataError;

#[cfg(test)]
mod test_util {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new(label: &str) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let unique = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("lgaf-data-{label}-{}-{unique}", std::process::id()));
            // A leftover from a crashed run with the same pid must not leak in.
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("cannot create temp dir");
            Self(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
