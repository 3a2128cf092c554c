//! The admin HTTP API, on its own thread and port (default 127.0.0.1:18083), off the message
//! path: `ringmq ctl` talks to it, Prometheus scrapes `/metrics` from it, and the web dashboard
//! (`/dashboard/`) is served from it. Requests are answered one at a time from the shards'
//! control queues. Who may ask is decided by `guard`: beyond loopback the API requires a bearer
//! token or basic-auth credentials (checked by `config`), and it checks them on loopback too
//! when set; the dashboard logs in with the same credentials and holds a session cookie.

mod api;
mod counters;
mod dashboard;
mod guard;
mod sessions;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;

use tiny_http::{Header, Method, Response, Server};

use crate::broker::Broker;
use sessions::Sessions;

const JSON: &str = "application/json";

/// An answer: HTTP status, body, its content type and any extra headers.
pub struct Answer {
    status: u16,
    body: String,
    content_type: &'static str,
    headers: Vec<(&'static str, String)>,
}

impl Answer {
    pub fn json(status: u16, v: serde_json::Value) -> Answer {
        Answer::text(status, JSON, v.to_string())
    }

    pub fn error(status: u16, message: impl Into<String>) -> Answer {
        Answer::json(status, serde_json::json!({ "error": message.into() }))
    }

    pub fn text(status: u16, content_type: &'static str, body: impl Into<String>) -> Answer {
        Answer {
            status,
            body: body.into(),
            content_type,
            headers: Vec::new(),
        }
    }

    /// A 302 to `location` (a path on this server).
    pub fn redirect(location: &str) -> Answer {
        Answer::text(302, "text/plain", "").with_header("Location", location)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    fn into_response(self) -> Response<std::io::Cursor<Vec<u8>>> {
        let mut resp = Response::from_string(self.body).with_status_code(self.status);
        let always = [
            ("Content-Type", self.content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
        ];
        let extra = self.headers.iter().map(|(n, v)| (*n, v.as_str()));
        for (name, value) in always.into_iter().chain(extra) {
            if let Ok(h) = Header::from_bytes(name, value) {
                resp = resp.with_header(h);
            }
        }
        resp
    }
}

/// What the guard and the dashboard read of a request.
pub struct Asked {
    method: Method,
    url: String,
    peer: Option<SocketAddr>,
    headers: Vec<(String, String)>,
}

impl Asked {
    fn of(req: &tiny_http::Request) -> Asked {
        Asked {
            method: req.method().clone(),
            url: req.url().to_string(),
            peer: req.remote_addr().copied(),
            headers: req
                .headers()
                .iter()
                .map(|h| (h.field.as_str().to_string(), h.value.as_str().to_string()))
                .collect(),
        }
    }

    /// The path, without the query.
    fn path(&self) -> &str {
        self.url.split('?').next().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the request changes state (and so needs the CSRF token when made with a cookie).
    fn changes_state(&self) -> bool {
        !matches!(self.method, Method::Get | Method::Head | Method::Options)
    }
}

/// The admin thread's state: the broker and the dashboard's sessions.
struct Admin {
    broker: Arc<Broker>,
    sessions: Sessions,
}

impl Admin {
    fn answer(&mut self, asked: &Asked, body: &str) -> Answer {
        let path = asked.path();
        if path == "/" {
            return Answer::redirect(dashboard::HOME);
        }
        if path == "/dashboard" || path.starts_with("/dashboard/") {
            return dashboard::route(&self.broker, &mut self.sessions, asked, body);
        }
        match guard::api_access(&self.broker.config(), &mut self.sessions, asked) {
            Ok(()) => api::route(&self.broker, &asked.method, &asked.url, body),
            Err(refused) => refused,
        }
    }
}

/// Binds the API and serves it on a new thread; returns the bound address.
pub fn start(broker: Arc<Broker>) -> Result<SocketAddr, String> {
    let bind = broker.config().admin.bind;
    let server =
        Server::http(bind).map_err(|e| format!("cannot bind the admin API on {bind}: {e}"))?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or("the admin API is not on an IP address")?;
    let mut admin = Admin {
        broker,
        sessions: Sessions::default(),
    };
    std::thread::Builder::new()
        .name("ringmq-admin".into())
        .spawn(move || {
            for mut req in server.incoming_requests() {
                let asked = Asked::of(&req);
                let mut body = String::new();
                let _ = req.as_reader().take(1 << 20).read_to_string(&mut body);
                let answer = admin.answer(&asked, &body);
                let _ = req.respond(answer.into_response());
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(addr)
}
