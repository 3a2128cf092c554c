//! The ACL file: ordered rules, the first that matches decides. ringmq's own lines:
//!
//! ```text
//! # allow|deny  who                                  action              [eq] topic-filter
//! allow user alice publish sensors/%u/#
//! deny  ip 10.0.0.0/8 subscribe eq #
//! allow client dev-1 all devices/${clientid}/#
//! allow all subscribe $SYS/#
//! ```
//! `who` is `all`, `anonymous`, `user NAME`, `client ID` or `ip CIDR`; the action `publish`,
//! `subscribe` or `all`; `%u`/`${username}` and `%c`/`${clientid}` are replaced by the client's;
//! `eq` compares the filter literally instead of as a wildcard filter. A Mosquitto ACL file
//! (`user`, `topic [read|write|readwrite|deny]`, `pattern`) is read as Mosquitto reads it: its
//! `deny` lines first, then the grants; `read` is subscribe and `write` publish.
//!
//! A placeholder whose value holds `/`, `+` or `#` would let a client id widen a rule (a client
//! named `#`): such a rule never allows, and always denies.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use crate::topic::{covers, matches};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    All,
    Anonymous,
    User(String),
    Client(String),
    Ip(IpNet),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actions {
    Publish,
    Subscribe,
    Both,
}

#[derive(Debug, Clone)]
struct Rule {
    allow: bool,
    who: Who,
    actions: Actions,
    eq: bool,
    filter: String,
}

/// Who is asking.
pub struct Client<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
    pub ip: IpAddr,
}

#[derive(Debug, Default)]
pub struct Acl {
    rules: Vec<Rule>,
}

impl Acl {
    pub fn load(path: &Path) -> Result<Acl, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Acl::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Acl, String> {
        let mut rules = Vec::new();
        let mut mosquitto_denies = Vec::new();
        let mut mosquitto_user: Option<Who> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |why: String| format!("{origin}:{}: {why}", i + 1);
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[0] {
                "allow" | "deny" => rules.push(parse_rule(&words).map_err(err)?),
                "user" => {
                    let name = line["user".len()..].trim();
                    if name.is_empty() {
                        return Err(err("`user` needs a name".into()));
                    }
                    mosquitto_user = Some(Who::User(name.to_string()));
                }
                "topic" | "pattern" => {
                    let who = if words[0] == "pattern" {
                        Who::All
                    } else {
                        mosquitto_user.clone().unwrap_or(Who::Anonymous)
                    };
                    let rule = parse_mosquitto(&words, who).map_err(err)?;
                    if rule.allow {
                        rules.push(rule);
                    } else {
                        mosquitto_denies.push(rule);
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown rule {other:?}: expected allow, deny, user, topic or pattern"
                    )))
                }
            }
        }
        mosquitto_denies.extend(rules);
        Ok(Acl {
            rules: mosquitto_denies,
        })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first matching rule's answer, or `None` when no rule matches.
    pub fn check(&self, c: &Client<'_>, action: Action, topic: &str) -> Option<bool> {
        for r in &self.rules {
            let applies = match (&r.who, c.username) {
                (Who::All, _) => true,
                (Who::Anonymous, u) => u.is_none(),
                (Who::User(n), Some(u)) => n == u,
                (Who::User(_), None) => false,
                (Who::Client(id), _) => id == c.client_id,
                (Who::Ip(net), _) => net.contains(&c.ip),
            };
            let acts = match (r.actions, action) {
                (Actions::Both, _) => true,
                (Actions::Publish, a) => a == Action::Publish,
                (Actions::Subscribe, a) => a == Action::Subscribe,
            };
            if !applies || !acts {
                continue;
            }
            let Some(filter) = substitute(&r.filter, c) else {
                if r.allow {
                    continue;
                }
                return Some(false);
            };
            let hit = if r.eq {
                filter == topic
            } else {
                match action {
                    Action::Publish => matches(&filter, topic),
                    Action::Subscribe => covers(&filter, topic),
                }
            };
            if hit {
                return Some(r.allow);
            }
        }
        None
    }
}

/// Replaces the placeholders; `None` when a value would widen the filter (or is missing).
fn substitute(filter: &str, c: &Client<'_>) -> Option<String> {
    if !filter.contains('%') && !filter.contains("${") {
        return Some(filter.to_string());
    }
    let unsafe_value = |v: &str| v.contains(['/', '+', '#']) || v.is_empty();
    let mut out = filter.to_string();
    for key in ["%u", "${username}"] {
        if out.contains(key) {
            let u = c.username.filter(|u| !unsafe_value(u))?;
            out = out.replace(key, u);
        }
    }
    for key in ["%c", "${clientid}"] {
        if out.contains(key) {
            if unsafe_value(c.client_id) {
                return None;
            }
            out = out.replace(key, c.client_id);
        }
    }
    Some(out)
}

fn parse_rule(words: &[&str]) -> Result<Rule, String> {
    let allow = words[0] == "allow";
    let mut rest = &words[1..];
    let mut next = |what: &str| -> Result<&str, String> {
        let (w, r) = rest
            .split_first()
            .ok_or_else(|| format!("missing {what}"))?;
        rest = r;
        Ok(w)
    };
    let who = match next("who (all, anonymous, user, client, ip)")? {
        "all" => Who::All,
        "anonymous" => Who::Anonymous,
        "user" => Who::User(next("user name")?.to_string()),
        "client" => Who::Client(next("client id")?.to_string()),
        "ip" => {
            let v = next("address")?;
            let net = v
                .parse::<IpNet>()
                .or_else(|_| v.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("bad address or CIDR {v:?}"))?;
            Who::Ip(net)
        }
        other => {
            return Err(format!(
                "unknown who {other:?}: expected all, anonymous, user, client or ip"
            ))
        }
    };
    let actions = match next("action (publish, subscribe, all)")? {
        "publish" => Actions::Publish,
        "subscribe" => Actions::Subscribe,
        "all" | "pubsub" => Actions::Both,
        other => {
            return Err(format!(
                "unknown action {other:?}: expected publish, subscribe or all"
            ))
        }
    };
    let (eq, filter) = match (next("topic filter")?, next("")) {
        ("eq", Ok(f)) => (true, f),
        (f, Err(_)) => (false, f),
        (_, Ok(extra)) => return Err(format!("unexpected {extra:?} after the topic filter")),
    };
    if let Ok(extra) = next("") {
        return Err(format!("unexpected {extra:?} after the topic filter"));
    }
    crate::topic::validate_filter(filter).map_err(|_| format!("bad topic filter {filter:?}"))?;
    Ok(Rule {
        allow,
        who,
        actions,
        eq,
        filter: filter.to_string(),
    })
}

fn parse_mosquitto(words: &[&str], who: Who) -> Result<Rule, String> {
    let (access, filter) = match words {
        [_, f] => ("readwrite", *f),
        [_, a, f] => (*a, *f),
        _ => {
            return Err(format!(
                "{} takes [read|write|readwrite|deny] TOPIC",
                words[0]
            ))
        }
    };
    let (allow, actions) = match access {
        "read" => (true, Actions::Subscribe),
        "write" => (true, Actions::Publish),
        "readwrite" => (true, Actions::Both),
        "deny" => (false, Actions::Both),
        other => {
            return Err(format!(
                "unknown access {other:?}: expected read, write, readwrite or deny"
            ))
        }
    };
    crate::topic::validate_filter(filter).map_err(|_| format!("bad topic filter {filter:?}"))?;
    Ok(Rule {
        allow,
        who,
        actions,
        eq: false,
        filter: filter.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client<'a>(user: Option<&'a str>, id: &'a str) -> Client<'a> {
        Client {
            username: user,
            client_id: id,
            ip: "10.1.2.3".parse().expect("ip"),
        }
    }

    #[test]
    fn ringmq_rules_in_order_with_placeholders_and_eq() {
        let acl = Acl::parse(
            "deny ip 10.0.0.0/8 subscribe eq #\n\
             allow user alice publish sensors/%u/#\n\
             allow all subscribe devices/${clientid}/cmd\n\
             allow all subscribe a/#\n",
            "acl",
        )
        .expect("parses");
        let alice = client(Some("alice"), "c1");
        assert_eq!(acl.check(&alice, Action::Subscribe, "#"), Some(false));
        assert_eq!(
            acl.check(&alice, Action::Publish, "sensors/alice/t"),
            Some(true)
        );
        assert_eq!(acl.check(&alice, Action::Publish, "sensors/bob/t"), None);
        assert_eq!(
            acl.check(&alice, Action::Subscribe, "devices/c1/cmd"),
            Some(true)
        );
        assert_eq!(acl.check(&alice, Action::Subscribe, "a/+/x"), Some(true));
        let sneaky = client(Some("alice"), "+");
        assert_eq!(acl.check(&sneaky, Action::Subscribe, "devices/+/cmd"), None);
    }

    #[test]
    fn mosquitto_format_denies_first() {
        let acl = Acl::parse(
            "topic read public/#\n\
             user bob\n\
             topic readwrite bob/#\n\
             topic deny bob/secret\n\
             pattern write clients/%c/status\n",
            "acl",
        )
        .expect("parses");
        let bob = client(Some("bob"), "b1");
        assert_eq!(acl.check(&bob, Action::Publish, "bob/secret"), Some(false));
        assert_eq!(acl.check(&bob, Action::Publish, "bob/x"), Some(true));
        assert_eq!(acl.check(&bob, Action::Subscribe, "public/x"), None);
        let anon = client(None, "a1");
        assert_eq!(acl.check(&anon, Action::Subscribe, "public/x"), Some(true));
        assert_eq!(
            acl.check(&anon, Action::Publish, "clients/a1/status"),
            Some(true)
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = Acl::parse("allow user a publish t\nallow nobody publish t\n", "f").unwrap_err();
        assert!(e.starts_with("f:2:"), "{e}");
        let e = Acl::parse("allow all publish a/#/b\n", "f").unwrap_err();
        assert!(e.contains("bad topic filter"), "{e}");
    }
}
