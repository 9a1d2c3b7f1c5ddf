//! Secret and ConfigMap volumes laid out as the kubelet lays them out
//! (its "atomic writer"): the files live in a timestamped directory
//! `..<stamp>/`, `..data` links to it, and each top-level name links
//! through `..data`. An update writes a new directory and renames a new
//! `..data` link over the old one, so a reader sees the old set or the new
//! set, never a mix — which is what the nodes' file watching relies on.

use anyhow::{Context as _, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

/// One projected file: path inside the volume, bytes, mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: String,
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// What a volume holds; `digest` tells whether a rewrite is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contents {
    pub files: Vec<File>,
    /// Group owner of every file (the pod's `fsGroup`).
    pub group: Option<u32>,
}

impl Contents {
    pub fn digest(&self) -> String {
        let mut h = blake3::Hasher::new();
        for f in &self.files {
            h.update(f.path.as_bytes());
            h.update(&[0]);
            h.update(&f.mode.to_le_bytes());
            h.update(&(f.bytes.len() as u64).to_le_bytes());
            h.update(&f.bytes);
        }
        h.update(&self.group.unwrap_or(u32::MAX).to_le_bytes());
        hex::encode(&h.finalize().as_bytes()[..8])
    }
}

/// The files of a Secret or ConfigMap volume: every key, or only `items`
/// (key → path, optional per-item mode); `default_mode` else 0644. With an
/// `fsGroup` the kubelet makes files group-readable (mode | 0440).
pub fn project(
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[(String, String, Option<i32>)]>,
    default_mode: Option<i32>,
    fs_group: Option<i64>,
) -> Contents {
    let base = default_mode.map_or(0o644, |m| m as u32 & 0o777);
    let fix = |mode: u32| {
        if fs_group.is_some() {
            mode | 0o440
        } else {
            mode
        }
    };
    let files = match items {
        Some(items) => items
            .iter()
            .filter_map(|(key, path, mode)| {
                Some(File {
                    path: path.clone(),
                    bytes: data.get(key)?.clone(),
                    mode: fix(mode.map_or(base, |m| m as u32 & 0o777)),
                })
            })
            .collect(),
        None => data
            .iter()
            .map(|(k, v)| File {
                path: k.clone(),
                bytes: v.clone(),
                mode: fix(base),
            })
            .collect(),
    };
    Contents {
        files,
        group: fs_group.and_then(|g| u32::try_from(g).ok()),
    }
}

/// Writes `contents` into `dir` the kubelet's way, replacing what is there
/// with one rename. `stamp` names the new data directory.
pub fn write(dir: &Path, contents: &Contents, stamp: &str) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let data_dir = dir.join(format!("..{stamp}"));
    std::fs::create_dir_all(&data_dir)?;
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755))?;
    let mut top = std::collections::BTreeSet::new();
    for f in &contents.files {
        let p = data_dir.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, &f.bytes).with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode))?;
        if let Some(g) = contents.group {
            std::os::unix::fs::chown(&p, Some(0), Some(g))?;
        }
        if let Some(first) = f.path.split('/').next() {
            top.insert(first.to_owned());
        }
    }
    // The swap: a new link, renamed over `..data` (atomic on one filesystem).
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(format!("..{stamp}"), &tmp)?;
    let old = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data"))?;
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link)?;
        }
    }
    // Names the new set no longer has, and the old data directory.
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !top.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old
        && old != Path::new(&format!("..{stamp}"))
    {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn items_default_mode_and_fs_group_shape_the_files_and_an_update_swaps_data() {
        let data: BTreeMap<String, Vec<u8>> = [
            ("a".to_owned(), b"1".to_vec()),
            ("b".to_owned(), b"2".to_vec()),
        ]
        .into();
        let c = project(&data, None, Some(0o400), Some(65532));
        assert_eq!(c.files.len(), 2);
        assert_eq!(c.files[0].mode, 0o440);
        let only = [("b".to_owned(), "sub/x".to_owned(), None)];
        let c2 = project(&data, Some(&only), Some(0o400), None);
        assert_eq!(
            c2.files,
            vec![File {
                path: "sub/x".into(),
                bytes: b"2".to_vec(),
                mode: 0o400
            }]
        );

        let dir = std::env::temp_dir().join(format!("dcdn-pods-vol-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        write(&dir, &project(&data, None, None, None), "1").unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        assert_eq!(
            std::fs::read_link(dir.join("a")).unwrap(),
            Path::new("..data/a")
        );
        let changed: BTreeMap<String, Vec<u8>> = [("a".to_owned(), b"9".to_vec())].into();
        write(&dir, &project(&changed, None, None, None), "2").unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"9");
        assert!(
            std::fs::symlink_metadata(dir.join("b")).is_err(),
            "a removed key leaves"
        );
        assert!(!dir.join("..1").exists(), "the old data directory is gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
