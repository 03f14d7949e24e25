//! The last applied policy on local disk: written atomically (temporary file, fsync, rename,
//! fsync of the folder) after every apply, read at start when etcd cannot be reached.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::Error;

/// The file name inside `state-dir`.
pub const FILE: &str = "cluster-policy.json";

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    /// The etcd prefix it came from: a file left by another cluster is not used.
    prefix: String,
    revision: i64,
    document: serde_json::Value,
}

/// Where the policy is kept.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Writes `document` (the raw value from etcd) with its revision.
pub fn save(
    state_dir: &Path,
    prefix: &str,
    revision: i64,
    document: &serde_json::Value,
) -> Result<(), Error> {
    let path = path(state_dir);
    let err = |source| Error::Persist {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(err)?;
    let body = serde_json::to_vec_pretty(&Persisted {
        prefix: prefix.to_owned(),
        revision,
        document: document.clone(),
    })
    .map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = state_dir.join(format!(".{FILE}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(state_dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// The persisted (revision, document bytes) for `prefix`, if there is one.
pub fn load(state_dir: &Path, prefix: &str) -> Result<Option<(i64, Vec<u8>)>, Error> {
    let path = path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(Error::Persist { path, source }),
    };
    let p: Persisted = serde_json::from_slice(&bytes).map_err(|e| Error::Persist {
        path: path.clone(),
        source: std::io::Error::other(format!("not a persisted cluster policy: {e}")),
    })?;
    if p.prefix != prefix {
        return Ok(None);
    }
    Ok(Some((
        p.revision,
        serde_json::to_vec(&p.document).unwrap_or_default(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_policy_reads_back_for_its_prefix_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let doc = serde_json::json!({"format": 1, "tableacl": {}});
        save(dir.path(), "/vtguard", 7, &doc).expect("save");
        let (rev, bytes) = load(dir.path(), "/vtguard").expect("load").expect("some");
        assert_eq!(rev, 7);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("json"),
            doc
        );
        assert!(load(dir.path(), "/other").expect("load").is_none());
        save(dir.path(), "/vtguard", 8, &doc).expect("overwrite");
        assert_eq!(
            load(dir.path(), "/vtguard").expect("load").expect("some").0,
            8
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from(FILE)]);
    }
}
