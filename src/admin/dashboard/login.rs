//! The dashboard's login (the admin username and password, or the token, as configured),
//! logout, and the session a page asks about to learn its user and CSRF token.

use serde_json::{json, Value};

use super::super::guard;
use super::super::sessions::{Sessions, LIFETIME};
use super::super::{Answer, Asked};
use crate::config::Config;

fn cookie_header(value: &str, max_age: u64) -> String {
    format!(
        "{}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}",
        guard::COOKIE
    )
}

/// `POST /dashboard/login` with `{"username","password"}` or `{"token"}`.
pub fn login(cfg: &Config, sessions: &mut Sessions, asked: &Asked, body: &str) -> Answer {
    if guard::open(cfg) {
        return Answer::error(400, "the admin API has no credentials configured: no login");
    }
    if !sessions.login_allowed() {
        return Answer::error(429, "too many failed logins: try again in a minute");
    }
    let form: Value = serde_json::from_str(body).unwrap_or_default();
    let field = |k: &str| form[k].as_str().unwrap_or("").to_string();
    let peer = asked.peer.map(|p| p.to_string()).unwrap_or_default();
    let Some(user) =
        guard::login_user(cfg, &field("username"), &field("password"), &field("token"))
    else {
        sessions.failed();
        tracing::warn!(%peer, "dashboard login refused: wrong credentials");
        return Answer::error(401, "wrong username or password");
    };
    match sessions.create(&user, guard::fingerprint(cfg)) {
        Ok(s) => {
            tracing::info!(%peer, user = %s.user(), "dashboard login");
            Answer::json(200, json!({ "user": s.user(), "csrf": s.csrf() }))
                .with_header("Set-Cookie", cookie_header(s.id(), LIFETIME.as_secs()))
        }
        Err(e) => Answer::error(500, e),
    }
}

/// `POST /dashboard/logout`: ends the session (its CSRF token required) and clears the cookie.
pub fn logout(cfg: &Config, sessions: &mut Sessions, asked: &Asked) -> Answer {
    let cleared = cookie_header("", 0);
    let Some(s) = guard::session(cfg, sessions, asked) else {
        return Answer::json(200, json!({ "logged_out": true })).with_header("Set-Cookie", cleared);
    };
    if let Err(refused) = guard::csrf_checked(s, asked) {
        return refused;
    }
    let id = s.id().to_string();
    sessions.remove(&id);
    Answer::json(200, json!({ "logged_out": true })).with_header("Set-Cookie", cleared)
}

/// `GET /dashboard/session`: the user and CSRF token of the cookie's session (an open API
/// needs neither), or 401.
pub fn current(cfg: &Config, sessions: &mut Sessions, asked: &Asked) -> Answer {
    if guard::open(cfg) {
        return Answer::json(200, json!({ "user": null, "csrf": "", "open": true }));
    }
    match guard::session(cfg, sessions, asked) {
        Some(s) => Answer::json(
            200,
            json!({ "user": s.user(), "csrf": s.csrf(), "open": false }),
        ),
        None => Answer::error(401, "not logged in"),
    }
}
