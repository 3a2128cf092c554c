//! Who may ask the admin API and the dashboard. With no admin credentials configured (which
//! `config` allows on loopback only) the API is open; otherwise a request needs a bearer token
//! or basic-auth credentials (what `ringmq ctl` and Prometheus send), or the dashboard's
//! session cookie, and then a state-changing request also needs the session's CSRF token in
//! `X-CSRF-Token`. Requests a browser makes are held to the page's own origin, and an open API
//! answers only to a loopback `Host` (so a page elsewhere cannot reach it by DNS rebinding).
//! Secrets are compared in constant time.

use std::net::IpAddr;

use base64::Engine;
use sha2::{Digest, Sha256};

use super::sessions::{Session, Sessions};
use super::{Answer, Asked};
use crate::auth::constant_time_eq;
use crate::config::Config;

/// The dashboard's session cookie.
pub const COOKIE: &str = "ringmq_session";

/// Whether the API asks for no credentials (none are configured).
pub fn open(cfg: &Config) -> bool {
    cfg.admin.token.is_none() && cfg.admin.username.is_none()
}

/// Compares a secret given with the one configured without saying where they differ (nor,
/// since digests are compared, how long the configured one is).
fn secret_eq(given: &str, want: &str) -> bool {
    constant_time_eq(&Sha256::digest(given), &Sha256::digest(want))
}

/// The configured credentials as one digest: a session opened with credentials that have
/// changed since (a reload) is no longer valid.
pub fn fingerprint(cfg: &Config) -> [u8; 32] {
    let a = &cfg.admin;
    let mut h = Sha256::new();
    for part in [&a.username, &a.password, &a.token] {
        h.update(part.as_deref().unwrap_or("").as_bytes());
        h.update([0, u8::from(part.is_some())]);
    }
    h.finalize().into()
}

/// Who the login form's fields name, if they match the configured username and password or
/// the token.
pub fn login_user(cfg: &Config, username: &str, password: &str, token: &str) -> Option<String> {
    let a = &cfg.admin;
    if let (Some(want), false) = (&a.token, token.is_empty()) {
        return secret_eq(token, want).then(|| "token".to_string());
    }
    let (Some(user), Some(pass)) = (&a.username, &a.password) else {
        return None;
    };
    (secret_eq(username, user) & secret_eq(password, pass)).then(|| user.clone())
}

/// A bearer token or basic-auth credentials in `Authorization`, as configured.
fn credentials(cfg: &Config, asked: &Asked) -> bool {
    let a = &cfg.admin;
    let Some(value) = asked.header("Authorization") else {
        return false;
    };
    if let (Some(token), Some(given)) = (&a.token, value.strip_prefix("Bearer ")) {
        return secret_eq(given.trim(), token);
    }
    if let (Some(user), Some(pass), Some(given)) =
        (&a.username, &a.password, value.strip_prefix("Basic "))
    {
        let want = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        return secret_eq(given.trim(), &want);
    }
    false
}

/// The session cookie's value, if the request carries one.
pub fn cookie(asked: &Asked) -> Option<&str> {
    asked
        .header("Cookie")?
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// The dashboard session the request's cookie names, if it is live.
pub fn session<'s>(cfg: &Config, sessions: &'s mut Sessions, asked: &Asked) -> Option<&'s Session> {
    sessions.find(cookie(asked)?, &fingerprint(cfg))
}

fn host_name(host_port: &str) -> &str {
    match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host_port.rsplit_once(':').map_or(host_port, |(h, _)| h),
    }
}

fn loopback_host(asked: &Asked) -> bool {
    asked.header("Host").is_none_or(|h| {
        let name = host_name(h.trim());
        name.eq_ignore_ascii_case("localhost")
            || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// A request without `Origin` comes from no web page; one with it must come from this server's
/// own pages.
fn same_origin(asked: &Asked) -> bool {
    let Some(origin) = asked.header("Origin") else {
        return true;
    };
    let (Some(host), Some(from)) = (asked.header("Host"), origin.split_once("://")) else {
        return false;
    };
    from.1.eq_ignore_ascii_case(host.trim())
}

/// What every request, to the API or the dashboard, must pass before its credentials count.
pub fn browser_checks(cfg: &Config, asked: &Asked) -> Result<(), Answer> {
    if open(cfg) && !loopback_host(asked) {
        return Err(Answer::error(
            403,
            "the admin API has no credentials configured: it answers to a loopback Host only",
        ));
    }
    if asked.changes_state() && !same_origin(asked) {
        return Err(Answer::error(
            403,
            "cross-origin request refused (Origin is not this server)",
        ));
    }
    Ok(())
}

/// Whether the API answers this request: open, or credentials, or a live session cookie (and
/// then its CSRF token on a state-changing request).
pub fn api_access(cfg: &Config, sessions: &mut Sessions, asked: &Asked) -> Result<(), Answer> {
    browser_checks(cfg, asked)?;
    if open(cfg) || credentials(cfg, asked) {
        return Ok(());
    }
    match session(cfg, sessions, asked) {
        Some(s) => csrf_checked(s, asked),
        None => Err(Answer::error(
            401,
            "unauthorized: use admin.token (Bearer) or admin.username/password (Basic)",
        )),
    }
}

/// A state-changing request made with the session's cookie must carry its CSRF token.
pub fn csrf_checked(s: &Session, asked: &Asked) -> Result<(), Answer> {
    let given = asked.header("X-CSRF-Token").unwrap_or("");
    if asked.changes_state() && !secret_eq(given, s.csrf()) {
        return Err(Answer::error(403, "missing or wrong X-CSRF-Token"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(method: tiny_http::Method, headers: &[(&str, &str)]) -> Asked {
        Asked {
            method,
            url: "/api/v1/status".into(),
            peer: None,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn an_open_api_answers_loopback_hosts_only() {
        let cfg = Config::default();
        let get = tiny_http::Method::Get;
        for host in [
            "127.0.0.1:18083",
            "localhost:18083",
            "[::1]:18083",
            "127.0.0.1",
        ] {
            assert!(browser_checks(&cfg, &asked(get.clone(), &[("Host", host)])).is_ok());
        }
        let rebound = asked(get, &[("Host", "evil.example:18083")]);
        assert_eq!(browser_checks(&cfg, &rebound).unwrap_err().status, 403);
    }

    #[test]
    fn state_changes_from_another_origin_are_refused() {
        let cfg = Config::default();
        let put = tiny_http::Method::Put;
        let host = ("Host", "127.0.0.1:18083");
        let own = asked(put.clone(), &[host, ("Origin", "http://127.0.0.1:18083")]);
        assert!(browser_checks(&cfg, &own).is_ok());
        for origin in ["http://evil.example", "null"] {
            let other = asked(put.clone(), &[host, ("Origin", origin)]);
            assert_eq!(browser_checks(&cfg, &other).unwrap_err().status, 403);
        }
    }

    #[test]
    fn login_takes_the_password_or_the_token() {
        let mut cfg = Config::default();
        cfg.admin.username = Some("admin".into());
        cfg.admin.password = Some("pw".into());
        assert_eq!(login_user(&cfg, "admin", "pw", ""), Some("admin".into()));
        assert_eq!(login_user(&cfg, "admin", "px", ""), None);
        assert_eq!(login_user(&cfg, "root", "pw", ""), None);
        assert_eq!(login_user(&cfg, "", "", "pw"), None);
        cfg.admin.token = Some("tok".into());
        assert_eq!(login_user(&cfg, "", "", "tok"), Some("token".into()));
        assert_eq!(login_user(&cfg, "", "", "tok2"), None);
        let before = fingerprint(&cfg);
        cfg.admin.password = Some("pw2".into());
        assert_ne!(before, fingerprint(&cfg));
    }
}
