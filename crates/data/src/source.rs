//! Training datasets behind one interface, [`FaceSource`]: indexed samples with a label
//! and either encoded bytes or pixels.
//!
//! * [`FolderSource`]: `root/<identity>/*.jpg|png`; identities are the sorted sub-folder
//!   names (label = position), images are sorted within each.
//! * [`SynthSource`]: the synthetic faces of [`crate::synth`], rendered on demand.
//! * [`RecordPack`]: an insightface RecordIO pack; it returns [`Payload::Encoded`] with a
//!   `Cow::Borrowed` slice of the memory map, so reading copies nothing.

use std::borrow::Cow;
use std::fs;
use std::path::{Path, PathBuf};

use crate::decode::DecodeError;
use crate::image_folder::list_images;
use crate::recordio::{RecordIoError, RecordPack};
use crate::synth::{SynthConfig, SynthDataset};
use crate::DataError;

/// The content of one sample.
#[derive(Debug)]
pub enum Payload<'a> {
    /// A JPEG or PNG as stored; borrowed where the source holds it in memory.
    Encoded(Cow<'a, [u8]>),
    /// Pixels that are already decoded: 112x112 RGB8 HWC.
    Rgb112(Vec<u8>),
}

/// Why a sample or a source could not be read. Each variant names the sample (with
/// [`FaceSource::describe`]) or the path involved.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{what}: {action}: {source}")]
    Io {
        what: String,
        /// What was being attempted, e.g. "cannot read the image file".
        action: &'static str,
        source: std::io::Error,
    },

    #[error(transparent)]
    Decode(#[from] DecodeError),

    /// A malformed record in a pack; `what` carries the record index and byte offset.
    #[error("{what}: {message}")]
    Corrupt { what: String, message: String },

    #[error("{source_name}: sample {index} requested, but it holds {len}")]
    OutOfRange {
        source_name: String,
        index: usize,
        len: usize,
    },

    #[error("{root}: {problem}")]
    Layout { root: PathBuf, problem: String },

    #[error(transparent)]
    Listing(#[from] DataError),

    /// A pack record that cannot be read (the error names file, record and byte offset).
    #[error(transparent)]
    Record(#[from] RecordIoError),
}

/// An indexed, labelled collection of face images, shared by the loader's threads.
pub trait FaceSource: Send + Sync {
    /// Number of samples; indices are `0..len()`.
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of identities; labels are `0..num_classes()`.
    fn num_classes(&self) -> usize;

    /// The identity of sample `index`.
    ///
    /// # Panics
    /// If `index >= len()`.
    fn label(&self, index: usize) -> u32;

    /// The content of sample `index`.
    fn read(&self, index: usize) -> Result<Payload<'_>, SourceError>;

    /// Names sample `index` for messages, e.g. a file path or "train.rec record 12 at
    /// byte 3456".
    fn describe(&self, index: usize) -> String;

    /// Names the whole source for messages, e.g. "image folder /data/faces".
    fn name(&self) -> String;
}

/// Images in `root/<identity>/`, one sub-folder per identity.
#[derive(Debug)]
pub struct FolderSource {
    root: PathBuf,
    /// Sub-folder names, sorted; label = position.
    identities: Vec<String>,
    /// (file, label), identity by identity, files sorted within each.
    samples: Vec<(PathBuf, u32)>,
}

impl FolderSource {
    /// Lists `root`: every sub-folder is an identity and must hold at least one image
    /// (.jpg, .jpeg or .png directly inside it); plain files in `root` are ignored.
    pub fn open(root: &Path) -> Result<Self, SourceError> {
        let io_error = |source| {
            SourceError::Listing(DataError::Io {
                action: "cannot read directory",
                path: root.to_path_buf(),
                source,
            })
        };
        let mut dirs = Vec::new();
        for entry in fs::read_dir(root).map_err(io_error)? {
            let path = entry.map_err(io_error)?.path();
            if path.is_dir() {
                dirs.push(path);
            }
        }
        dirs.sort();
        if dirs.is_empty() {
            return Err(SourceError::Layout {
                root: root.to_path_buf(),
                problem: "expected one sub-folder per identity, found none".into(),
            });
        }
        let too_many = || SourceError::Layout {
            root: root.to_path_buf(),
            problem: format!("{} identities exceed the u32 label range", dirs.len()),
        };
        let mut identities = Vec::with_capacity(dirs.len());
        let mut samples = Vec::new();
        for (label, dir) in dirs.iter().enumerate() {
            let label = u32::try_from(label).map_err(|_| too_many())?;
            samples.extend(list_images(dir)?.into_iter().map(|file| (file, label)));
            identities.push(dir.file_name().map_or_else(
                || dir.display().to_string(),
                |name| name.to_string_lossy().into_owned(),
            ));
        }
        Ok(Self {
            root: root.to_path_buf(),
            identities,
            samples,
        })
    }

    /// Identity names (sub-folder names) in label order.
    pub fn identities(&self) -> &[String] {
        &self.identities
    }

    /// The file of sample `index`.
    ///
    /// # Panics
    /// If `index >= len()`.
    pub fn path(&self, index: usize) -> &Path {
        &self.samples[index].0
    }
}

impl FaceSource for FolderSource {
    fn len(&self) -> usize {
        self.samples.len()
    }

    fn num_classes(&self) -> usize {
        self.identities.len()
    }

    fn label(&self, index: usize) -> u32 {
        self.samples[index].1
    }

    fn read(&self, index: usize) -> Result<Payload<'_>, SourceError> {
        let (path, _) = self
            .samples
            .get(index)
            .ok_or_else(|| SourceError::OutOfRange {
                source_name: self.name(),
                index,
                len: self.len(),
            })?;
        let bytes = fs::read(path).map_err(|source| SourceError::Io {
            what: path.display().to_string(),
            action: "cannot read the image file",
            source,
        })?;
        Ok(Payload::Encoded(Cow::Owned(bytes)))
    }

    fn describe(&self, index: usize) -> String {
        match self.samples.get(index) {
            Some((path, _)) => path.display().to_string(),
            None => format!("{} sample {index}", self.name()),
        }
    }

    fn name(&self) -> String {
        format!("image folder {}", self.root.display())
    }
}

/// The synthetic training faces: `identities x images_per_identity` samples, sample `i`
/// of identity `i / images_per_identity`.
pub struct SynthSource {
    dataset: SynthDataset,
}

impl SynthSource {
    pub fn new(cfg: SynthConfig) -> Self {
        Self {
            dataset: SynthDataset::new(cfg),
        }
    }

    pub fn dataset(&self) -> &SynthDataset {
        &self.dataset
    }
}

impl FaceSource for SynthSource {
    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn num_classes(&self) -> usize {
        self.dataset.config().identities
    }

    fn label(&self, index: usize) -> u32 {
        assert!(
            index < self.len(),
            "SynthSource::label: index {index} of {}",
            self.len()
        );
        // Identity ids fit u32 by SynthDataset's own construction (it asserts the same).
        (index / self.dataset.config().images_per_identity) as u32
    }

    fn read(&self, index: usize) -> Result<Payload<'_>, SourceError> {
        if index >= self.len() {
            return Err(SourceError::OutOfRange {
                source_name: self.name(),
                index,
                len: self.len(),
            });
        }
        Ok(Payload::Rgb112(self.dataset.get(index).rgb))
    }

    fn describe(&self, index: usize) -> String {
        format!("{} sample {index}", self.name())
    }

    fn name(&self) -> String {
        format!("synthetic faces (seed {})", self.dataset.config().seed)
    }
}

impl FaceSource for RecordPack {
    fn len(&self) -> usize {
        self.image_count()
    }

    fn num_classes(&self) -> usize {
        self.identity_count()
    }

    fn label(&self, index: usize) -> u32 {
        self.labels()[index]
    }

    fn read(&self, index: usize) -> Result<Payload<'_>, SourceError> {
        if index >= self.len() {
            return Err(SourceError::OutOfRange {
                source_name: FaceSource::name(self),
                index,
                len: self.len(),
            });
        }
        Ok(Payload::Encoded(self.image(index)?.bytes))
    }

    fn describe(&self, index: usize) -> String {
        if index >= self.len() {
            return format!("{} image {index}", self.path().display());
        }
        let (key, offset) = self.image_location(index);
        format!(
            "{} image {index} (record key {key} at byte {offset})",
            self.path().display()
        )
    }

    fn name(&self) -> String {
        format!("RecordIO pack {}", self.path().display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image_folder::save_png;
    use crate::test_util::TempDir;

    fn solid(value: u8) -> Vec<u8> {
        vec![value; 112 * 112 * 3]
    }

    #[test]
    fn folder_labels_follow_sorted_identity_names() {
        let dir = TempDir::new("source-folder");
        let root = dir.path();
        for (identity, files) in [("bob", &["2.png", "1.png"][..]), ("alice", &["x.png"][..])] {
            fs::create_dir(root.join(identity)).unwrap();
            for (k, f) in files.iter().enumerate() {
                save_png(&root.join(identity).join(f), &solid(k as u8), 112, 112).unwrap();
            }
        }
        fs::write(root.join("README"), "not an identity").unwrap();
        let source = FolderSource::open(root).unwrap();
        assert_eq!(source.identities(), ["alice", "bob"]);
        assert_eq!((source.len(), source.num_classes()), (3, 2));
        let labels: Vec<u32> = (0..3).map(|i| source.label(i)).collect();
        assert_eq!(labels, [0, 1, 1]);
        assert!(
            source.describe(1).ends_with("1.png"),
            "{}",
            source.describe(1)
        );
        assert!(
            matches!(source.read(2).unwrap(), Payload::Encoded(Cow::Owned(b)) if !b.is_empty())
        );
        let err = source.read(3).unwrap_err().to_string();
        assert!(err.contains("sample 3 requested, but it holds 3"), "{err}");
    }

    #[test]
    fn folder_layout_errors_name_the_place() {
        let dir = TempDir::new("source-folder-bad");
        let err = FolderSource::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("one sub-folder per identity"), "{err}");
        fs::create_dir(dir.path().join("empty_identity")).unwrap();
        let err = FolderSource::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("empty_identity"), "{err}");
        let err = FolderSource::open(&dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn synthetic_source_matches_the_dataset() {
        let cfg = SynthConfig {
            seed: 4,
            identities: 3,
            images_per_identity: 5,
            nuisance_prob: 0.5,
        };
        let source = SynthSource::new(cfg.clone());
        assert_eq!((source.len(), source.num_classes()), (15, 3));
        let direct = SynthDataset::new(cfg);
        for i in [0, 4, 5, 14] {
            assert_eq!(source.label(i), direct.get(i).label);
            match source.read(i).unwrap() {
                Payload::Rgb112(rgb) => assert_eq!(rgb, direct.get(i).rgb),
                Payload::Encoded(_) => panic!("synthetic samples are pixels"),
            }
        }
        assert!(source.read(15).is_err());
    }
}
