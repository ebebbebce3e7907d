//! Identities of full blocks for the prefix cache: a block's hash chains its parent's hash with its
//! own token ids, so equal hashes mean equal whole prefixes (the pool still compares token ids on a
//! hit, so a collision can never serve wrong keys).

use std::hash::{Hash, Hasher};

/// A full block's chained hash.
pub type BlockHash = u64;

/// Fixed seed of the hasher: hashes are stable within a process and across runs.
const SEED: u64 = 0x6b6f_6465_6761_2d31;

/// Hash of a full block of `tokens` that follows the block hashed `parent` (`None` at the start).
pub fn block_hash(parent: Option<BlockHash>, tokens: &[u32]) -> BlockHash {
    let mut h = std::hash::DefaultHasher::new();
    SEED.hash(&mut h);
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_depends_on_the_whole_prefix() {
        let a = block_hash(None, &[1, 2]);
        assert_eq!(a, block_hash(None, &[1, 2]));
        assert_ne!(block_hash(Some(a), &[3, 4]), block_hash(Some(block_hash(None, &[9, 2])), &[3, 4]));
        assert_ne!(block_hash(None, &[1, 2]), block_hash(None, &[2, 1]));
    }
}
