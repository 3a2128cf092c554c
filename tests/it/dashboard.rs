//! The dashboard's access rules at the HTTP level (#15), with a raw HTTP/1.1 client so every
//! header is seen: without a session the dashboard redirects to its login page, a wrong
//! password sets no cookie, the right one sets an HttpOnly SameSite=Strict cookie that opens the
//! API, a change made with the cookie needs the session's CSRF token, logout ends the session,
//! `ctl`'s bearer and basic access is unchanged, and an API without credentials answers to a
//! loopback Host only and refuses changes from another origin.

use std::io::{Read, Write};
use std::net::TcpStream;

use base64::Engine;

use crate::harness::Broker;

const CREDENTIALS: &str =
    "[broker]\npin_cores = false\n[admin]\nusername = \"admin\"\npassword = \"s3cret-pw\"\ntoken = \"tok-9\"\n";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }
}

/// One request on its own connection; `headers` are added to Host and Connection.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin API");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("Host")) {
        req += &format!("Host: 127.0.0.1:{port}\r\n");
    }
    for (n, v) in headers {
        req += &format!("{n}: {v}\r\n");
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

fn login(port: u16, form: &str) -> Reply {
    http(
        port,
        "POST",
        "/dashboard/login",
        &[("Content-Type", "application/json")],
        form,
    )
}

#[test]
fn dashboard_sessions_cookies_and_csrf() {
    let b = Broker::with_toml(1, CREDENTIALS);
    let p = b.admin;

    let home = http(p, "GET", "/dashboard/", &[], "");
    assert_eq!(home.status, 302);
    assert_eq!(home.header("Location"), Some("/dashboard/login"));
    assert_eq!(
        http(p, "GET", "/", &[], "").header("Location"),
        Some("/dashboard/")
    );
    let form = http(p, "GET", "/dashboard/login", &[], "");
    assert_eq!(form.status, 200);
    assert!(form.body.contains("login-form"));
    assert!(form.header("Content-Security-Policy").is_some());
    assert_eq!(http(p, "GET", "/dashboard/session", &[], "").status, 401);

    let wrong = login(p, r#"{"username":"admin","password":"nope"}"#);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert!(wrong.header("Set-Cookie").is_none());
    b.wait_log("dashboard login refused");
    assert_eq!(login(p, r#"{"token":"tok-8"}"#).status, 401);

    let ok = login(p, r#"{"username":"admin","password":"s3cret-pw"}"#);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let set = ok.header("Set-Cookie").expect("a session cookie");
    let flags: Vec<&str> = set.split("; ").collect();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(flags.contains(&flag), "{flag} in {set}");
    }
    let cookie = flags[0];
    let (name, value) = cookie.split_once('=').expect("name=value");
    assert_eq!(name, "ringmq_session");
    assert_eq!(value.len(), 64);
    let csrf = ok.json()["csrf"].as_str().expect("csrf token").to_string();
    assert_eq!(ok.json()["user"], "admin");

    let with_cookie = [("Cookie", cookie)];
    assert_eq!(http(p, "GET", "/dashboard/", &with_cookie, "").status, 200);
    let session = http(p, "GET", "/dashboard/session", &with_cookie, "");
    assert_eq!(session.json()["csrf"], csrf.as_str());
    assert_eq!(
        http(p, "GET", "/api/v1/status", &with_cookie, "").status,
        200
    );

    let level = r#"{"level":"debug"}"#;
    let refused = http(p, "PUT", "/api/v1/log/level", &with_cookie, level);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("CSRF"));
    let bad = [("Cookie", cookie), ("X-CSRF-Token", "0000")];
    assert_eq!(http(p, "PUT", "/api/v1/log/level", &bad, level).status, 403);
    let good = [("Cookie", cookie), ("X-CSRF-Token", csrf.as_str())];
    assert_eq!(
        http(p, "PUT", "/api/v1/log/level", &good, level).status,
        200
    );
    let foreign = [
        ("Cookie", cookie),
        ("X-CSRF-Token", csrf.as_str()),
        ("Origin", "http://evil.example"),
    ];
    assert_eq!(
        http(p, "PUT", "/api/v1/log/level", &foreign, level).status,
        403
    );

    assert_eq!(
        http(p, "POST", "/dashboard/logout", &with_cookie, "").status,
        403
    );
    assert_eq!(http(p, "POST", "/dashboard/logout", &good, "").status, 200);
    assert_eq!(
        http(p, "GET", "/api/v1/status", &with_cookie, "").status,
        401
    );
    assert_eq!(http(p, "GET", "/dashboard/", &with_cookie, "").status, 302);

    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:s3cret-pw")
    );
    assert_eq!(
        http(p, "GET", "/api/v1/status", &[("Authorization", &basic)], "").status,
        200
    );
    let bearer = [("Authorization", "Bearer tok-9")];
    assert_eq!(
        http(p, "PUT", "/api/v1/log/level", &bearer, level).status,
        200
    );
    assert_eq!(
        http(
            p,
            "GET",
            "/api/v1/status",
            &[("Authorization", "Bearer tok-8")],
            ""
        )
        .status,
        401
    );
    let token_login = login(p, r#"{"token":"tok-9"}"#);
    assert_eq!(token_login.status, 200);
    assert_eq!(token_login.json()["user"], "token");

    let config = http(p, "GET", "/api/v1/config", &bearer, "");
    assert_eq!(config.json()["admin"]["password"], "(hidden)");
    assert!(!config.body.contains("s3cret-pw") && !config.body.contains("tok-9"));
}

#[test]
fn an_open_api_answers_loopback_pages_only() {
    let b = Broker::start(1);
    let p = b.admin;
    let home = http(p, "GET", "/dashboard/", &[], "");
    assert_eq!(home.status, 200, "no login without credentials");
    assert!(home.body.contains("/dashboard/assets/app.js"));
    assert_eq!(
        http(p, "GET", "/dashboard/login", &[], "").header("Location"),
        Some("/dashboard/")
    );
    assert_eq!(
        http(p, "GET", "/dashboard/assets/app.js", &[], "").status,
        200
    );
    assert_eq!(
        http(p, "GET", "/dashboard/session", &[], "").json()["open"],
        true
    );

    let rebound = [("Host", "evil.example:18083")];
    assert_eq!(http(p, "GET", "/api/v1/clients", &rebound, "").status, 403);
    assert_eq!(http(p, "GET", "/dashboard/", &rebound, "").status, 403);
    assert_eq!(
        http(p, "GET", "/api/v1/status", &[("Host", "localhost")], "").status,
        200
    );

    let level = r#"{"level":"debug"}"#;
    let foreign = [("Origin", "http://evil.example")];
    assert_eq!(
        http(p, "PUT", "/api/v1/log/level", &foreign, level).status,
        403
    );
    let own = format!("http://127.0.0.1:{p}");
    assert_eq!(
        http(p, "PUT", "/api/v1/log/level", &[("Origin", &own)], level).status,
        200
    );

    let stats = http(p, "GET", "/api/v1/stats", &[], "").json();
    assert_eq!(stats["shards"].as_array().map(Vec::len), Some(1));
    assert!(stats["shards"][0]["loop_lag_us"].is_i64());
}
