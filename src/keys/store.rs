//! The embedded key store: a JSON file of generated keys (digests only),
//! written atomically so a crash leaves the old or the new file, never a
//! torn one.

use super::{from_hex, to_hex};
use crate::atomic_file;
use crate::clock::unix_now;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One stored key (no plaintext).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub digest: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<u64>,
    #[serde(default)]
    pub revoked: bool,
    pub created_at: u64,
}

/// The file's content.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyFile {
    pub keys: Vec<StoredKey>,
}

pub use crate::config::key_store_path as store_path;

/// Reads the store; a missing file is an empty store. Only a regular
/// file of at most [`crate::config::MAX_KEY_STORE_BYTES`] is read.
pub fn load(path: &Path) -> Result<KeyFile, String> {
    match read_capped(path) {
        Ok(text) => {
            let file: KeyFile = serde_json::from_str(&text)
                .map_err(|e| format!("key store {}: {e}", path.display()))?;
            for (i, k) in file.keys.iter().enumerate() {
                if from_hex(&k.digest).is_none() {
                    return Err(format!(
                        "key store {}: keys[{i}].digest is not a SHA-256 hex digest",
                        path.display()
                    ));
                }
            }
            Ok(file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(KeyFile::default()),
        Err(e) => Err(format!("cannot read key store {}: {e}", path.display())),
    }
}

fn read_capped(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let max = crate::config::MAX_KEY_STORE_BYTES;
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(text)
}

/// Writes the store atomically: temp file in the same folder, fsync, rename, fsync the folder.
pub fn save(path: &Path, file: &KeyFile) -> Result<(), String> {
    let text = serde_json::to_string_pretty(file).map_err(|e| e.to_string())?;
    atomic_file::write(path, text.as_bytes())
        .map_err(|e| format!("cannot write key store {}: {e}", path.display()))
}

/// A new random key: (plaintext shown once, id).
pub fn generate() -> (String, String) {
    use ring::rand::SecureRandom;
    let rng = ring::rand::SystemRandom::new();
    let mut secret = [0u8; 24];
    let mut id = [0u8; 6];
    rng.fill(&mut secret).expect("system randomness");
    rng.fill(&mut id).expect("system randomness");
    (
        format!("fgk_{}", to_hex(&secret)),
        format!("key_{}", to_hex(&id)),
    )
}

/// Creates a key in the store; returns (plaintext, stored entry).
pub fn create(
    path: &Path,
    name: &str,
    scopes: Vec<String>,
    routes: Vec<String>,
    expires_at: Option<u64>,
) -> Result<(String, StoredKey), String> {
    let mut file = load(path)?;
    if file.keys.iter().any(|k| k.name == name && !k.revoked) {
        return Err(format!(
            "a key named {name:?} already exists (revoke it first or pick another name)"
        ));
    }
    let (plain, id) = generate();
    let entry = StoredKey {
        id,
        name: name.to_string(),
        digest: to_hex(&super::digest(plain.as_bytes())),
        scopes,
        routes,
        expires_at,
        revoked: false,
        created_at: unix_now(),
    };
    file.keys.push(entry.clone());
    save(path, &file)?;
    Ok((plain, entry))
}

/// Marks a key revoked (by id or name).
pub fn revoke(path: &Path, id_or_name: &str) -> Result<StoredKey, String> {
    let mut file = load(path)?;
    let k = file
        .keys
        .iter_mut()
        .find(|k| (k.id == id_or_name || k.name == id_or_name) && !k.revoked)
        .ok_or_else(|| {
            format!(
                "no active key with id or name {id_or_name:?} in {}",
                path.display()
            )
        })?;
    k.revoked = true;
    let out = k.clone();
    save(path, &file)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn create_list_revoke_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        let (plain, k) = create(&path, "ci", vec!["read".into()], vec![], Some(123)).unwrap();
        assert!(plain.starts_with("fgk_") && plain.len() == 52);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&plain), "plaintext is never stored");
        assert!(text.contains(&k.digest));
        assert!(
            create(&path, "ci", vec![], vec![], None).is_err(),
            "names are unique"
        );
        assert_eq!(load(&path).unwrap().keys.len(), 1);
        assert!(revoke(&path, &k.id).unwrap().revoked);
        assert!(revoke(&path, "ci").is_err(), "already revoked");
        assert!(load(&path).unwrap().keys[0].revoked);
    }

    #[test]
    fn relative_store_paths_follow_the_config() {
        assert_eq!(
            store_path(Path::new("/etc/flexgate/flexgate.yaml"), None),
            PathBuf::from("/etc/flexgate/flexgate-keys.json")
        );
        assert_eq!(
            store_path(
                Path::new("/etc/f.yaml"),
                Some("/var/lib/flexgate/keys.json")
            ),
            PathBuf::from("/var/lib/flexgate/keys.json")
        );
    }
}
