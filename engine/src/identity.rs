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
//! # A node that lost its data directory
//!
//! A node whose disk was replaced can come back as the same ring member
//! with `serve --node-id` ([`Fresh::Restored`]): the id it had is used when
//! the directory has no `node.id` yet (and refused if `node.id` names
//! another node). Such a node is one that lost everything, its incarnation
//! and its partitions' actor epochs (`replica`) included, so the usual rule
//! (start at incarnation 0, bump on loss) cannot apply: its earlier life's
//! actors were `(id, incarnation + epoch)` for a few small epochs past an
//! incarnation nobody remembers. So its incarnation is drawn at random from
//! `[2^30, 2^31)` instead:
//!
//! - A node's first life starts at 0 and moves on by one per bump or
//!   epoch, so it never gets near 2^30: the restored node cannot reissue
//!   its dots at all.
//! - An earlier restored life (a node restored twice) used a small
//!   contiguous range `[a, a + k)` from its own random `a`. The new range
//!   `[b, b + k')` overlaps it only if `|a - b| < max(k, k')`, which for a
//!   few dozen incarnations and epochs has a probability around `1e-7`
//!   (`2 * 50 / 2^30`): a reissued dot then needs that overlap *and* a
//!   write to the same key under the same partition epoch.
//! - Drawing from below 2^31 leaves 2^31 incarnations of headroom for the
//!   bumps and epochs that follow (each a `checked_add`).
//!
//! Replicas then compare clocks with actors the key has never seen, which
//! is what a bump does anyway; anti-entropy and read repair bring the
//! node's data back from the other replicas.
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
use std::ops::Range;
use std::path::Path;

const FILE: &str = "node.id";
const HEADER: &str = "holdfast-node 1";

/// Where a restored node's incarnation is drawn from (see the module docs).
pub const RESTORED_INCARNATIONS: Range<u32> = 1 << 30..1 << 31;

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
    #[error(
        "{path} says this is node {existing:016x}, not {given:016x} as --node-id (node_id) \
         says; refusing to start as another node (drop the id, or give the right data directory)"
    )]
    Mismatch { path: String, existing: u64, given: u64 },
}

/// What a node with no `node.id` in its data directory becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fresh {
    /// A new node: this (random) id, at incarnation 0.
    New(u64),
    /// A node that lost its data directory, back under the id it had
    /// (`serve --node-id`), at an incarnation its earlier life cannot have
    /// used (drawn from [`RESTORED_INCARNATIONS`]; see the module docs).
    /// An existing `node.id` must name the same node.
    Restored { node: u64, incarnation: u32 },
}

impl Fresh {
    /// A new node with a random id, or, given `node`, that node restored at
    /// a random incarnation in [`RESTORED_INCARNATIONS`].
    pub fn choose(node: Option<u64>, rng: &mut impl rand::Rng) -> Fresh {
        match node {
            None => Fresh::New(rng.random()),
            Some(node) => {
                Fresh::Restored { node, incarnation: rng.random_range(RESTORED_INCARNATIONS) }
            }
        }
    }
}

/// Loads the identity in `dir`, creating it (as `fresh` says) if there is
/// none, and bumping the incarnation if `bump` says the node may have lost
/// data. The result is durable when this returns.
///
/// # Errors
///
/// [`IdentityError::Mismatch`] if `fresh` restores a node and `node.id`
/// names another one; [`IdentityError::Damaged`] if `node.id` does not
/// parse; [`IdentityError::Io`] if it cannot be read or written.
pub fn load_or_create(dir: &Path, fresh: Fresh, bump: bool) -> Result<Identity, IdentityError> {
    let path = dir.join(FILE);
    let io_error = |source| IdentityError::Io { path: path.display().to_string(), source };
    let identity = match fs::read_to_string(&path) {
        Ok(text) => {
            let existing = parse(&text).map_err(|detail| IdentityError::Damaged {
                path: path.display().to_string(),
                detail,
            })?;
            if let Fresh::Restored { node: given, .. } = fresh
                && given != existing.node
            {
                return Err(IdentityError::Mismatch {
                    path: path.display().to_string(),
                    existing: existing.node,
                    given,
                });
            }
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
        Err(error) if error.kind() == io::ErrorKind::NotFound => match fresh {
            Fresh::New(node) => Identity { node, incarnation: 0 },
            Fresh::Restored { node, incarnation } => Identity { node, incarnation },
        },
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
        let first = load_or_create(dir.path(), Fresh::New(0xabc), false).unwrap();
        assert_eq!(first, Identity { node: 0xabc, incarnation: 0 });
        assert_eq!(load_or_create(dir.path(), Fresh::New(0xdef), false).unwrap(), first);
        let bumped = load_or_create(dir.path(), Fresh::New(0xdef), true).unwrap();
        assert_eq!(bumped, Identity { node: 0xabc, incarnation: 1 });
        assert_eq!(load_or_create(dir.path(), Fresh::New(0xdef), false).unwrap(), bumped);
    }

    #[test]
    fn a_damaged_identity_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), Fresh::New(7), false).unwrap();
        let path = dir.path().join(FILE);
        let text = fs::read_to_string(&path).unwrap().replace("id 0000", "id 0001");
        fs::write(&path, text).unwrap();
        assert!(matches!(
            load_or_create(dir.path(), Fresh::New(8), false),
            Err(IdentityError::Damaged { .. })
        ));
    }

    fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
        rand::SeedableRng::seed_from_u64(seed)
    }

    #[test]
    fn a_node_without_an_id_is_new_at_incarnation_0() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = Fresh::choose(None, &mut rng(1));
        let Fresh::New(node) = fresh else { panic!("{fresh:?}") };
        assert_eq!(
            load_or_create(dir.path(), fresh, false).unwrap(),
            Identity { node, incarnation: 0 }
        );
    }

    #[test]
    fn an_explicit_id_on_a_fresh_directory_restores_the_node_far_from_its_old_actors() {
        for seed in 0..100 {
            let dir = tempfile::tempdir().unwrap();
            let fresh = Fresh::choose(Some(0xfeed), &mut rng(seed));
            let identity = load_or_create(dir.path(), fresh, false).unwrap();
            assert_eq!(identity.node, 0xfeed, "the id is kept");
            assert!(
                RESTORED_INCARNATIONS.contains(&identity.incarnation),
                "incarnation {} (seed {seed})",
                identity.incarnation
            );
            // It is durable: a restart without the flag is the same node.
            let again = load_or_create(dir.path(), Fresh::New(0xdef), false).unwrap();
            assert_eq!(again, identity);
        }
        // Draws differ (a fixed incarnation would collide on a second loss).
        let draws: std::collections::BTreeSet<u32> = (0..20)
            .map(|seed| match Fresh::choose(Some(0xfeed), &mut rng(seed)) {
                Fresh::Restored { node: 0xfeed, incarnation } => incarnation,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(draws.len() > 15, "{draws:?}");
    }

    #[test]
    fn an_explicit_id_that_is_not_the_directorys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let existing = load_or_create(dir.path(), Fresh::New(0xabc), false).unwrap();
        let restored = Fresh::Restored { node: 0xdef, incarnation: 1 << 30 };
        let error = load_or_create(dir.path(), restored, false).unwrap_err();
        assert!(
            matches!(error, IdentityError::Mismatch { existing: 0xabc, given: 0xdef, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("0000000000000abc"), "{error}");
        assert!(error.to_string().contains("0000000000000def"), "{error}");
        // Nothing changed on disk.
        assert_eq!(load_or_create(dir.path(), Fresh::New(1), false).unwrap(), existing);
    }

    #[test]
    fn an_explicit_id_matching_the_directorys_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let existing = load_or_create(dir.path(), Fresh::New(0xabc), false).unwrap();
        let restored = Fresh::Restored { node: 0xabc, incarnation: 1 << 30 };
        // The file wins: the node did not lose its directory.
        assert_eq!(load_or_create(dir.path(), restored, false).unwrap(), existing);
        assert_eq!(
            load_or_create(dir.path(), restored, true).unwrap(),
            Identity { incarnation: existing.incarnation + 1, ..existing }
        );
    }
}
