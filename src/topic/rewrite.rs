//! Topic rewrite rules as EMQX has them: a rule names what it applies to (publish, subscribe or
//! both), a source filter, a regular expression and a destination template with `$1`..`$9`,
//! `${clientid}` and `${username}`. For a topic (or a subscription's filter) the first rule
//! whose source matches decides: its expression rewrites the topic, or leaves it as it is when
//! it does not match. Rules are compiled once, when the configuration is read.

use regex::Regex;
use serde::{Deserialize, Serialize};

use super::{matches, validate_filter, validate_name};

/// What a rule rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RewriteAction {
    Publish,
    Subscribe,
    All,
}

/// A rule as the configuration writes it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    action: RewriteAction,
    source: String,
    re: String,
    dest: String,
}

/// One piece of a destination template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Group(usize),
    ClientId,
    Username,
}

/// A compiled rule; it reads from and writes as its [`RuleSpec`].
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(try_from = "RuleSpec", into = "RuleSpec")]
pub struct RewriteRule {
    spec: RuleSpec,
    re: Regex,
    dest: Vec<Piece>,
}

impl TryFrom<RuleSpec> for RewriteRule {
    type Error = String;

    fn try_from(spec: RuleSpec) -> Result<Self, String> {
        let name = format!(
            "rewrite rule (source {:?}, re {:?}, dest {:?})",
            spec.source, spec.re, spec.dest
        );
        validate_filter(&spec.source)
            .map_err(|_| format!("{name}: source is not a topic filter"))?;
        let re = Regex::new(&spec.re).map_err(|e| format!("{name}: {e}"))?;
        let dest = parse_template(&spec.dest);
        let groups = re.captures_len() - 1;
        if let Some(n) = dest.iter().find_map(|p| match p {
            Piece::Group(n) if *n > groups => Some(*n),
            _ => None,
        }) {
            return Err(format!(
                "{name}: dest uses ${n} but re has {groups} capture group(s)"
            ));
        }
        Ok(RewriteRule { spec, re, dest })
    }
}

impl From<RewriteRule> for RuleSpec {
    fn from(rule: RewriteRule) -> RuleSpec {
        rule.spec
    }
}

/// Splits a template into text, `$N` (one digit, as EMQX) and `${clientid}`/`${username}`.
fn parse_template(dest: &str) -> Vec<Piece> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = dest;
    while let Some(c) = rest.chars().next() {
        let placeholder = if let Some(r) = rest.strip_prefix("${clientid}") {
            Some((Piece::ClientId, r))
        } else if let Some(r) = rest.strip_prefix("${username}") {
            Some((Piece::Username, r))
        } else {
            let digit = rest.as_bytes().get(1).filter(|b| b.is_ascii_digit());
            match (c, digit) {
                ('$', Some(d)) => Some((Piece::Group(usize::from(d - b'0')), &rest[2..])),
                _ => None,
            }
        };
        match placeholder {
            Some((piece, r)) => {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
                rest = r;
            }
            None => {
                text.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    pieces
}

/// Whether a topic is a PUBLISH's name or a SUBSCRIBE/UNSUBSCRIBE's filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewriting {
    Publish,
    Subscribe,
}

/// Who the topic is rewritten for (`${clientid}`, `${username}`).
pub struct Rewriter<'a> {
    pub client_id: &'a str,
    pub username: Option<&'a str>,
}

impl Rewriter<'_> {
    /// The rewritten topic when the first rule whose source matches changes it into a valid
    /// name (or filter); `None` when it stays as it is.
    pub fn apply(&self, rules: &[RewriteRule], what: Rewriting, topic: &str) -> Option<String> {
        let rule = rules
            .iter()
            .filter(|r| match r.spec.action {
                RewriteAction::All => true,
                RewriteAction::Publish => what == Rewriting::Publish,
                RewriteAction::Subscribe => what == Rewriting::Subscribe,
            })
            .find(|r| matches(&r.spec.source, topic))?;
        let caps = rule.re.captures(topic)?;
        let mut out = String::with_capacity(topic.len());
        for piece in &rule.dest {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Group(n) => out.push_str(caps.get(*n).map_or("", |m| m.as_str())),
                Piece::ClientId => out.push_str(self.client_id),
                Piece::Username => out.push_str(self.username.unwrap_or("")),
            }
        }
        let valid = match what {
            Rewriting::Publish => validate_name(&out).is_ok(),
            Rewriting::Subscribe => validate_filter(&out).is_ok(),
        };
        if !valid {
            tracing::info!(%topic, rewritten = %out, source = %rule.spec.source, "rewrite result is not a valid topic: left as it was");
            return None;
        }
        (out != topic).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        action: RewriteAction,
        source: &str,
        re: &str,
        dest: &str,
    ) -> Result<RewriteRule, String> {
        RewriteRule::try_from(RuleSpec {
            action,
            source: source.into(),
            re: re.into(),
            dest: dest.into(),
        })
    }

    const WHO: Rewriter<'static> = Rewriter {
        client_id: "c1",
        username: Some("u1"),
    };

    #[test]
    fn first_matching_rule_rewrites_with_groups_and_placeholders() {
        let rules = vec![
            rule(
                RewriteAction::Publish,
                "x/#",
                r"^x/(.+)$",
                "y/$1/${clientid}",
            )
            .unwrap(),
            rule(RewriteAction::All, "x/#", r"^x/(.+)$", "never/$1").unwrap(),
            rule(
                RewriteAction::Subscribe,
                "s/+",
                r"^s/(\w+)$",
                "t/${username}/$1",
            )
            .unwrap(),
        ];
        assert_eq!(
            WHO.apply(&rules, Rewriting::Publish, "x/a/b").as_deref(),
            Some("y/a/b/c1")
        );
        // The publish-only rule is skipped for a subscription; the next matching one decides.
        assert_eq!(
            WHO.apply(&rules, Rewriting::Subscribe, "x/#").as_deref(),
            Some("never/#")
        );
        assert_eq!(
            WHO.apply(&rules, Rewriting::Subscribe, "s/k").as_deref(),
            Some("t/u1/k")
        );
        assert_eq!(WHO.apply(&rules, Rewriting::Publish, "s/k"), None);
        assert_eq!(WHO.apply(&rules, Rewriting::Publish, "z"), None);
    }

    #[test]
    fn a_source_match_whose_re_fails_stops_there() {
        let rules = vec![
            rule(RewriteAction::All, "a/#", "^a/only$", "b").unwrap(),
            rule(RewriteAction::All, "a/#", "^a/(.*)$", "c/$1").unwrap(),
        ];
        assert_eq!(WHO.apply(&rules, Rewriting::Publish, "a/other"), None);
        assert_eq!(
            WHO.apply(&rules, Rewriting::Publish, "a/only").as_deref(),
            Some("b")
        );
    }

    #[test]
    fn an_invalid_result_leaves_the_topic() {
        let rules = vec![rule(RewriteAction::Publish, "a/+", "^a/(.*)$", "b/$1/#").unwrap()];
        assert_eq!(WHO.apply(&rules, Rewriting::Publish, "a/x"), None);
    }

    #[test]
    fn bad_rules_are_named() {
        let e = rule(RewriteAction::All, "a/#", "(", "b").unwrap_err();
        assert!(e.contains("source \"a/#\"") && e.contains("regex"), "{e}");
        let e = rule(RewriteAction::All, "a/#/b", "a", "b").unwrap_err();
        assert!(e.contains("not a topic filter"), "{e}");
        let e = rule(RewriteAction::All, "a/#", "^a/(.*)$", "$2").unwrap_err();
        assert!(e.contains("$2"), "{e}");
    }

    #[test]
    fn templates_split_into_pieces() {
        assert_eq!(
            parse_template("a/$1/${clientid}$x${username}"),
            vec![
                Piece::Text("a/".into()),
                Piece::Group(1),
                Piece::Text("/".into()),
                Piece::ClientId,
                Piece::Text("$x".into()),
                Piece::Username,
            ]
        );
    }
}
