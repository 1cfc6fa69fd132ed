//! A node's identity: a stable id kept in its data directory, and an
//! incarnation number bumped whenever the node may have lost data.
//!
//! The id names the node (not its address, which may change). The
//! incarnation is part of every clock actor the node writes with, so that a
//! node which lost data can never issue a dot that looks older than, or
//! equal to, one it issued before (Riak's kv679 lost acknowledged writes
//! exactly that way: a node that forgot its counter reissued old dots, and
//! replicas discarded the new writes as already seen).
//!
//! The rule: the incarnation is bumped, and persisted before any write is
//! coordinated, when the data directory is new, when recovery found a torn
//! tail or corruption, and when the store does not sync every write (a
//! crash may then have lost acknowledged dots). A clean restart under
//! `fsync always` keeps the incarnation, so clocks do not grow with
//! restarts.
//!
//! ```text
//! node.id (text, written to node.id.tmp, fsynced, renamed, directory fsynced)
//!   holdfast-node 1
//!   id <u64 hex>
//!   incarnation <u32 decimal>
//!   checksum <crc32c hex of the lines above>
//! ```

use std::fs;
use std::io::{self, Write};
use std::path::Path;

const FILE: &str = "node.id";
const HEADER: &str = "holdfast-node 1";

/// A node's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub node: u64,
    pub incarnation: u32,
}

/// Why an identity could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path} is damaged ({detail}); refusing to guess the node's identity")]
    Damaged { path: String, detail: String },
}

/// Loads the identity in `dir`, creating it (with `new_node_id`) if there
/// is none, and bumping the incarnation if `bump` says the node may have
/// lost data. The result is durable when this returns.
pub fn load_or_create(dir: &Path, new_node_id: u64, bump: bool) -> Result<Identity, IdentityError> {
    let path = dir.join(FILE);
    let io_error = |source| IdentityError::Io { path: path.display().to_string(), source };
    let identity = match fs::read_to_string(&path) {
        Ok(text) => {
            let existing = parse(&text).map_err(|detail| IdentityError::Damaged {
                path: path.display().to_string(),
                detail,
            })?;
            if !bump {
                return Ok(existing);
            }
            let incarnation =
                existing.incarnation.checked_add(1).ok_or_else(|| IdentityError::Damaged {
                    path: path.display().to_string(),
                    detail: "incarnation exhausted".into(),
                })?;
            Identity { incarnation, ..existing }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Identity { node: new_node_id, incarnation: 0 }
        }
        Err(error) => return Err(io_error(error)),
    };
    store(dir, identity).map_err(io_error)?;
    Ok(identity)
}

fn render(identity: Identity) -> String {
    let body =
        format!("{HEADER}\nid {:016x}\nincarnation {}\n", identity.node, identity.incarnation);
    format!("{body}checksum {:08x}\n", crc32c::crc32c(body.as_bytes()))
}

fn parse(text: &str) -> Result<Identity, String> {
    let (body, checksum_line) = text.trim_end_matches('\n').rsplit_once('\n').ok_or("too short")?;
    let body = format!("{body}\n");
    let checksum = checksum_line.strip_prefix("checksum ").ok_or("no checksum line")?;
    if u32::from_str_radix(checksum, 16).ok() != Some(crc32c::crc32c(body.as_bytes())) {
        return Err("checksum mismatch".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(HEADER) {
        return Err("unknown format".into());
    }
    let node = lines
        .next()
        .and_then(|line| line.strip_prefix("id "))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or("bad id line")?;
    let incarnation = lines
        .next()
        .and_then(|line| line.strip_prefix("incarnation "))
        .and_then(|number| number.parse().ok())
        .ok_or("bad incarnation line")?;
    Ok(Identity { node, incarnation })
}

fn store(dir: &Path, identity: Identity) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let temporary = dir.join(format!("{FILE}.tmp"));
    let mut file = fs::File::create(&temporary)?;
    file.write_all(render(identity).as_bytes())?;
    file.sync_all()?;
    fs::rename(&temporary, dir.join(FILE))?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_survives_restarts_and_bumps_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), 0xabc, false).unwrap();
        assert_eq!(first, Identity { node: 0xabc, incarnation: 0 });
        assert_eq!(load_or_create(dir.path(), 0xdef, false).unwrap(), first);
        let bumped = load_or_create(dir.path(), 0xdef, true).unwrap();
        assert_eq!(bumped, Identity { node: 0xabc, incarnation: 1 });
        assert_eq!(load_or_create(dir.path(), 0xdef, false).unwrap(), bumped);
    }

    #[test]
    fn a_damaged_identity_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), 7, false).unwrap();
        let path = dir.path().join(FILE);
        let text = fs::read_to_string(&path).unwrap().replace("id 0000", "id 0001");
        fs::write(&path, text).unwrap();
        assert!(matches!(load_or_create(dir.path(), 8, false), Err(IdentityError::Damaged { .. })));
    }
}
