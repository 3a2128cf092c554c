//! Topic names and filters: the validation rules of the specification, shared-subscription
//! parsing (`$share/group/filter`, `$queue/filter`), `$exclusive/filter`, rewrite rules, and the trie that matches
//! a name (split once into [`Levels`]) against many filters.

mod levels;
mod rewrite;
mod trie;

pub use levels::Levels;
pub use rewrite::{RewriteAction, RewriteRule, Rewriter, Rewriting, RuleSpec};
pub use trie::Trie;

use crate::codec::DecodeError;

/// A topic name as a publisher may use it: not empty, no wildcard.
pub fn validate_name(name: &str) -> Result<(), DecodeError> {
    if name.is_empty() {
        return Err(DecodeError::EmptyTopicName);
    }
    if name.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(DecodeError::WildcardInTopicName);
    }
    Ok(())
}

/// A topic filter: `+` only as a whole level, `#` only as the whole last level, and for
/// `$share/group/filter` a group name without wildcards and a valid filter after it.
pub fn validate_filter(filter: &str) -> Result<(), DecodeError> {
    let plain = match parse_shared(filter) {
        Some(Ok((_, f))) => f,
        Some(Err(e)) => return Err(e),
        None => routing_filter(filter),
    };
    validate_plain_filter(plain)
}

fn validate_plain_filter(filter: &str) -> Result<(), DecodeError> {
    if filter.is_empty() {
        return Err(DecodeError::InvalidTopicFilter);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "#" => last,
            "+" => true,
            l => !l.contains(['+', '#']),
        };
        if !ok {
            return Err(DecodeError::InvalidTopicFilter);
        }
    }
    Ok(())
}

/// `Some` for a shared subscription, `$share/group/filter` or EMQX's `$queue/filter` (the
/// group `$queue`): its group and inner filter, or the error.
pub fn parse_shared(filter: &str) -> Option<Result<(&str, &str), DecodeError>> {
    if let Some(inner) = filter.strip_prefix("$queue/") {
        return Some(if inner.is_empty() {
            Err(DecodeError::InvalidTopicFilter)
        } else {
            Ok(("$queue", inner))
        });
    }
    let rest = filter.strip_prefix("$share/")?;
    Some(match rest.split_once('/') {
        Some((group, inner))
            if !group.is_empty() && !group.contains(['+', '#']) && !inner.is_empty() =>
        {
            Ok((group, inner))
        }
        _ => Err(DecodeError::InvalidTopicFilter),
    })
}

/// The inner filter of EMQX's `$exclusive/filter`: a plain subscription that only one client
/// at a time may hold.
pub fn parse_exclusive(filter: &str) -> Option<&str> {
    filter.strip_prefix("$exclusive/")
}

/// The filter a plain subscription matches names with: an exclusive one's inner filter.
pub fn routing_filter(filter: &str) -> &str {
    parse_exclusive(filter).unwrap_or(filter)
}

/// Matches one topic name against one filter (the reference the trie is tested against).
pub fn matches(filter: &str, name: &str) -> bool {
    if name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut n = name.split('/');
    loop {
        match (f.next(), n.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// True when every topic `filter` matches is also matched by `rule` (ACLs on subscriptions).
pub fn covers(rule: &str, filter: &str) -> bool {
    if filter.starts_with('$') && (rule.starts_with('+') || rule.starts_with('#')) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_table() {
        let table: &[(&str, bool)] = &[
            ("a/b", true),
            ("#", true),
            ("+", true),
            ("a/#", true),
            ("a/+/c", true),
            ("/", true),
            ("+/+", true),
            ("a/#/c", false),
            ("a#", false),
            ("a/b+", false),
            ("", false),
            ("$share/g/a/+", true),
            ("$share/g/#", true),
            ("$share//a", false),
            ("$share/g", false),
            ("$share/g/", false),
            ("$share/g+/a", false),
            ("$queue/a/+", true),
            ("$queue/", false),
            ("$queue/a#", false),
            ("$exclusive/a/#", true),
            ("$exclusive/", false),
            ("$exclusive/a/#/b", false),
        ];
        for (filter, ok) in table {
            assert_eq!(validate_filter(filter).is_ok(), *ok, "{filter}");
        }
    }

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("+/+", "/a", true),
            ("+", "/a", false),
            ("a/b", "a/c", false),
        ];
        for (f, n, m) in table {
            assert_eq!(matches(f, n), *m, "{f} vs {n}");
        }
    }

    #[test]
    fn covering_table() {
        let table: &[(&str, &str, bool)] = &[
            ("a/#", "a/+/c", true),
            ("a/#", "a/#", true),
            ("a/+", "a/#", false),
            ("a/+", "a/+", true),
            ("a/+", "a/b", true),
            ("a/b", "a/+", false),
            ("#", "a/#", true),
            ("#", "$SYS/#", false),
            ("$SYS/#", "$SYS/brokers/+", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a/b/#", false),
        ];
        for (r, f, c) in table {
            assert_eq!(covers(r, f), *c, "{r} covers {f}");
        }
    }

    #[test]
    fn names() {
        assert!(validate_name("a/b").is_ok());
        assert_eq!(validate_name("a/+"), Err(DecodeError::WildcardInTopicName));
        assert_eq!(validate_name(""), Err(DecodeError::EmptyTopicName));
    }
}
