//! Containment of a local-directory store: object_store's `LocalFileSystem` follows
//! symbolic links, so before each operation [`Store`] walks the way from its root to the key
//! and refuses a link anywhere below the root ([`StoreError::Symlink`]) or anything that is
//! neither a file nor a directory ([`StoreError::NotAFile`]); a listing first looks for a
//! link anywhere under its prefix. S3 has no links, so none of this applies there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;

use crate::error::{Result, StoreError};
use crate::store::Store;

/// The root of a local-directory store, kept so that each operation can check it stays
/// inside it.
#[derive(Debug)]
pub(crate) struct LocalRoot {
    pub(crate) fs: Arc<LocalFileSystem>,
    /// Canonical, resolved once at open: links above the root (a store on a symlinked
    /// disk) are the operator's choice; only what lies below it is checked.
    pub(crate) root: PathBuf,
}

impl LocalRoot {
    /// Opens the directory `dir` of the store `url`, creating it if `create` (a writer);
    /// otherwise it must exist ([`StoreError::NoStoreDir`]).
    pub(crate) fn open(url: &str, dir: &Path, create: bool) -> Result<Self> {
        let missing = |problem: String| StoreError::NoStoreDir {
            path: dir.display().to_string(),
            problem,
        };
        if create {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: dir.display().to_string(),
                source,
            })?;
        } else {
            match std::fs::metadata(dir) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => return Err(missing("is not a directory".into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(missing("does not exist".into()))
                }
                Err(e) => return Err(missing(format!("cannot be read: {e}"))),
            }
        }
        let root =
            std::fs::canonicalize(dir).map_err(|e| missing(format!("cannot be resolved: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|source| StoreError::Open {
                url: url.to_string(),
                source: Box::new(source),
            })?
            // Deleting a checkpoint's last file removes its folder too.
            .with_automatic_cleanup(true);
        Ok(Self {
            fs: Arc::new(fs),
            root,
        })
    }
}

/// The first symbolic link at or below `dir`, walking without following links. Entries
/// that cannot be read are passed over: the listing itself then fails and says why.
fn first_link_below(dir: &Path) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_symlink() => return Some(entry.path()),
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                _ => {}
            }
        }
    }
    None
}

impl Store {
    /// Refuses `key` on a local directory if the way to it below the root passes through a
    /// symbolic link, or reaches something that is neither a file nor a directory. What
    /// does not exist yet is created by a write as a real directory or file; what cannot
    /// be inspected (a file in the middle, no permission) makes the operation itself fail
    /// and say why. Checked before each call rather than by resolving afterwards, so
    /// nothing outside is ever opened.
    pub(crate) fn stay_inside(
        &self,
        op: &'static str,
        key: &str,
        location: &ObjectPath,
    ) -> Result<()> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let path = local
            .fs
            .path_to_filesystem(location)
            .map_err(|e| self.backend_err(op, key, e))?;
        let Ok(below) = path.strip_prefix(&local.root) else {
            // check_key refuses `..`, so this means a bug, not a hostile key.
            return Err(StoreError::InvalidKey {
                key: key.to_string(),
                reason: format!("it resolves to {}, outside the store", path.display()),
            });
        };
        let mut at = local.root.clone();
        for part in below.components() {
            at.push(part);
            match std::fs::symlink_metadata(&at) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(StoreError::Symlink {
                        op,
                        url: self.url.clone(),
                        key: key.to_string(),
                        link: at.display().to_string(),
                    })
                }
                Ok(meta) if meta.is_dir() || meta.is_file() => {}
                Ok(_) => {
                    return Err(StoreError::NotAFile {
                        op,
                        url: self.url.clone(),
                        key: key.to_string(),
                        path: at.display().to_string(),
                    })
                }
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Refuses a listing of `prefix` (at `location`; `None` for the whole store) on a local
    /// directory if any symbolic link lies below it: LocalFileSystem's listing follows links.
    pub(crate) async fn no_link_under(
        &self,
        prefix: &str,
        location: Option<&ObjectPath>,
    ) -> Result<()> {
        let Some(local) = &self.local else {
            return Ok(());
        };
        let dir = match location {
            Some(location) => {
                self.stay_inside("list", prefix, location)?;
                local
                    .fs
                    .path_to_filesystem(location)
                    .map_err(|e| self.backend_err("list", prefix, e))?
            }
            None => local.root.clone(),
        };
        let link = tokio::task::spawn_blocking(move || first_link_below(&dir))
            .await
            .map_err(|e| StoreError::Task(format!("listing `{prefix}`: {e}")))?;
        if let Some(link) = link {
            return Err(StoreError::Symlink {
                op: "list",
                url: self.url.clone(),
                key: if prefix.is_empty() {
                    "(everything)"
                } else {
                    prefix
                }
                .to_string(),
                link: link.display().to_string(),
            });
        }
        Ok(())
    }
}
