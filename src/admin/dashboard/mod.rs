//! The web dashboard: static pages, styles and scripts (plain HTML, CSS and JavaScript, no
//! build step) embedded in the binary and served under `/dashboard/`, and its login, logout
//! and session endpoints (`login`). The pages read and change the broker through the JSON API
//! with the session cookie, sending the session's CSRF token on every change.

mod login;

use tiny_http::Method;

use super::guard;
use super::sessions::Sessions;
use super::{Answer, Asked};
use crate::broker::Broker;

/// The dashboard's first page.
pub const HOME: &str = "/dashboard/";
const LOGIN: &str = "/dashboard/login";

/// Pages from this server only: no inline script, no framing by other sites.
const CSP: &str = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// The embedded files under `/dashboard/assets/`: name, content type, content.
const ASSETS: [(&str, &str, &str); 5] = [
    ("app.css", "text/css", include_str!("assets/app.css")),
    ("app.js", "text/javascript", include_str!("assets/app.js")),
    (
        "chart.js",
        "text/javascript",
        include_str!("assets/chart.js"),
    ),
    (
        "pages.js",
        "text/javascript",
        include_str!("assets/pages.js"),
    ),
    (
        "login.js",
        "text/javascript",
        include_str!("assets/login.js"),
    ),
];

fn page(html: &'static str) -> Answer {
    Answer::text(200, "text/html; charset=utf-8", html)
        .with_header("Content-Security-Policy", CSP)
        .with_header("X-Frame-Options", "DENY")
        .with_header("Referrer-Policy", "no-referrer")
}

pub fn route(broker: &Broker, sessions: &mut Sessions, asked: &Asked, body: &str) -> Answer {
    let cfg = broker.config();
    if let Err(refused) = guard::browser_checks(&cfg, asked) {
        return refused;
    }
    let path = asked.path();
    match (&asked.method, path) {
        (Method::Get, "/dashboard" | "/dashboard/" | "/dashboard/index.html") => {
            if guard::open(&cfg) || guard::session(&cfg, sessions, asked).is_some() {
                page(include_str!("assets/index.html"))
            } else {
                Answer::redirect(LOGIN)
            }
        }
        (Method::Get, LOGIN) if guard::open(&cfg) => Answer::redirect(HOME),
        (Method::Get, LOGIN) => page(include_str!("assets/login.html")),
        (Method::Post, LOGIN) => login::login(&cfg, sessions, asked, body),
        (Method::Post, "/dashboard/logout") => login::logout(&cfg, sessions, asked),
        (Method::Get, "/dashboard/session") => login::current(&cfg, sessions, asked),
        (Method::Get, p) => p
            .strip_prefix("/dashboard/assets/")
            .and_then(|name| ASSETS.iter().find(|(n, _, _)| *n == name))
            .map_or_else(
                || Answer::error(404, format!("no page {p}")),
                |(_, ctype, text)| Answer::text(200, ctype, *text),
            ),
        _ => Answer::error(404, format!("no endpoint {} {path}", asked.method)),
    }
}
