//! Rendezvous (highest random weight) hashing: every member scores every
//! key, and the highest scores form the key's ordered replica set. All
//! members that see the same live set compute the same placement without
//! talking, and a member joining or leaving moves only the keys it wins or
//! held.

use crate::key::CacheKey;

/// A stable 64-bit seed for a member id.
pub fn seed_of(id: &str) -> u64 {
    let hash = blake3::hash(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// The score of a member (by seed) for a key: a strong mix of both, so
/// that every member is equally likely to win any key.
pub fn score(seed: u64, key: &CacheKey) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&seed.to_le_bytes());
    hasher.update(&key.0);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// Indices of the `count` members (given by seed) that hold `key`, best
/// first. Ties (practically impossible) fall to the lower seed.
pub fn rank(seeds: &[u64], key: &CacheKey, count: usize) -> Vec<usize> {
    let mut scored: Vec<(u64, u64, usize)> = seeds
        .iter()
        .enumerate()
        .map(|(i, &seed)| (score(seed, key), seed, i))
        .collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(count).map(|(_, _, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> CacheKey {
        CacheKey(*blake3::hash(&n.to_le_bytes()).as_bytes())
    }

    fn ids(n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| seed_of(&format!("member-{i}:3320")))
            .collect()
    }

    #[test]
    fn replicas_are_distinct_and_ordered_consistently() {
        let seeds = ids(5);
        for n in 0..200 {
            let picked = rank(&seeds, &key(n), 3);
            assert_eq!(picked.len(), 3);
            let mut unique = picked.clone();
            unique.dedup();
            unique.sort_unstable();
            unique.dedup();
            assert_eq!(unique.len(), 3, "{picked:?}");
            // Order of the member list does not matter.
            let reversed: Vec<u64> = seeds.iter().rev().copied().collect();
            let again: Vec<u64> = rank(&reversed, &key(n), 3)
                .into_iter()
                .map(|i| reversed[i])
                .collect();
            let first: Vec<u64> = picked.into_iter().map(|i| seeds[i]).collect();
            assert_eq!(first, again);
        }
    }

    #[test]
    fn a_leaving_member_moves_only_its_own_keys() {
        let seeds = ids(4);
        let without_last = &seeds[..3];
        let mut moved = 0;
        for n in 0..2000 {
            let before = seeds[rank(&seeds, &key(n), 1)[0]];
            let after = without_last[rank(without_last, &key(n), 1)[0]];
            if before != seeds[3] {
                assert_eq!(before, after, "key {n} moved although its owner stayed");
            } else {
                moved += 1;
            }
        }
        // Each of 4 members owns about a quarter of the keys.
        assert!(
            (350..650).contains(&moved),
            "{moved} of 2000 keys were owned by one member"
        );
    }

    #[test]
    fn asking_for_more_replicas_than_members_gives_every_member() {
        let seeds = ids(2);
        assert_eq!(rank(&seeds, &key(1), 3).len(), 2);
        assert!(rank(&[], &key(1), 2).is_empty());
    }
}
