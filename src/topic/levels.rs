//! A topic name split into its levels once per publish, each level with its hash, so that every
//! trie walk of that publish (the shard's own subscribers, the interest table's plain and
//! shared filters) looks levels up without splitting or hashing the name again. Level hashes
//! come from one process-wide hasher (a random seed per process, so clients cannot aim for
//! collisions), which makes a hash taken here valid in every trie on every shard.

use std::sync::OnceLock;

use smallvec::SmallVec;

/// The hash of one topic level, as every trie keys its children.
pub(crate) fn level_hash(level: &str) -> u64 {
    static STATE: OnceLock<ahash::RandomState> = OnceLock::new();
    STATE.get_or_init(ahash::RandomState::new).hash_one(level)
}

/// One level of a name and its hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Level<'a> {
    pub name: &'a str,
    pub hash: u64,
}

/// A topic name's levels, split and hashed once.
#[derive(Debug)]
pub struct Levels<'a> {
    levels: SmallVec<[Level<'a>; 16]>,
    /// The name starts with `$`: wildcards at the first level do not match it.
    dollar: bool,
}

impl<'a> Levels<'a> {
    /// Splits `name` and hands its levels to `f`. They stay on this frame: the inline array is
    /// 384 bytes, and returning them by value copied all of it once per publish.
    pub fn with<R>(name: &'a str, f: impl FnOnce(&Levels<'a>) -> R) -> R {
        let mut out = Levels {
            levels: SmallVec::new(),
            dollar: name.starts_with('$'),
        };
        // A byte scan: `str::split('/')` looks for a char, which it compares with `memcmp`.
        let mut start = 0;
        for (i, b) in name.bytes().enumerate() {
            if b == b'/' {
                out.push(&name[start..i]);
                start = i + 1;
            }
        }
        out.push(&name[start..]);
        f(&out)
    }

    fn push(&mut self, level: &'a str) {
        self.levels.push(Level {
            name: level,
            hash: level_hash(level),
        });
    }

    pub(crate) fn levels(&self) -> &[Level<'a>] {
        &self.levels
    }

    pub(crate) fn dollar(&self) -> bool {
        self.dollar
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte scan splits as `str::split('/')` does: empty levels at either end and between
    /// slashes, multi-byte characters kept whole.
    #[test]
    fn splits_like_str_split() {
        for name in [
            "a",
            "",
            "/",
            "a/b/c",
            "/a",
            "a/",
            "a//b",
            "//",
            "$SYS/x",
            "é/ü€/😀",
            "+/#",
        ] {
            Levels::with(name, |levels| {
                let got: Vec<&str> = levels.levels().iter().map(|l| l.name).collect();
                let want: Vec<&str> = name.split('/').collect();
                assert_eq!(got, want, "{name:?}");
                assert!(levels.levels().iter().all(|l| l.hash == level_hash(l.name)));
                assert_eq!(levels.dollar(), name.starts_with('$'));
            });
        }
    }
}
