//! Support for the audit-API tests: the real daemon (`daemon::run`, file sink off)
//! in-process on a port-0 listener, a small HTTP/1.1 client that shows exactly what
//! came over the wire (status, headers, de-chunked body, and whether the body ended
//! properly), and fixtures for organizations, users, roles and tokens.
#![allow(dead_code)]

use std::time::Duration;

use compartment_auditd::config::Settings;
use compartment_auditd::daemon;
use compartment_auditd::db::admin::{self, Email, OrgSlug, RoleName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::common::TestDb;

/// The daemon, serving on loopback until dropped.
pub struct Server {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Starts the daemon on `db` with default settings changed by `tweak`.
    pub async fn start(db: &TestDb, tweak: impl FnOnce(&mut Settings)) -> Server {
        let mut settings = db.settings();
        settings.http.addr = "127.0.0.1:0".parse().expect("valid address");
        tweak(&mut settings);
        let listener = daemon::bind(&settings).await.expect("binding port 0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        settings.http.addr = addr;
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            daemon::run(settings, listener, token)
                .await
                .expect("the daemon starts");
        });
        Server {
            addr,
            shutdown,
            task: Some(task),
        }
    }

    /// A client of this server (cheap to copy into tasks).
    pub fn client(&self) -> Client {
        Client { addr: self.addr }
    }

    /// `GET path` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> HttpResponse {
        self.client().get(path, token).await
    }

    /// Any request, with extra headers.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        self.client().request(method, path, headers).await
    }

    /// Sends `bytes` as they are and reads the answer until the server closes.
    pub async fn raw(&self, bytes: &[u8]) -> HttpResponse {
        self.client().raw(bytes).await
    }

    /// Stops the daemon and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// A minimal HTTP/1.1 client (one request per connection).
#[derive(Debug, Clone, Copy)]
pub struct Client {
    /// The server.
    pub addr: std::net::SocketAddr,
}

impl Client {
    /// `GET path` with an optional bearer token.
    pub async fn get(&self, path: &str, token: Option<&str>) -> HttpResponse {
        let auth = token.map(|token| format!("Bearer {token}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|value| vec![("Authorization", value)])
            .unwrap_or_default();
        self.request("GET", path, &headers).await
    }

    /// Any request, with extra headers.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> HttpResponse {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        self.raw(head.as_bytes()).await
    }

    /// Sends `bytes` as they are and reads the answer until the server closes.
    pub async fn raw(&self, bytes: &[u8]) -> HttpResponse {
        let mut stream = TcpStream::connect(self.addr).await.expect("connecting");
        stream.write_all(bytes).await.expect("sending the request");
        let mut raw = Vec::new();
        // Bounds a hang only; every caller expects an answer.
        tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut raw))
            .await
            .expect("an answer within 120 s")
            .ok();
        HttpResponse::parse(&raw)
    }

    /// The request head of `GET path` with a bearer token.
    pub fn head(&self, path: &str, token: &str) -> String {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n",
            self.addr
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response as it came over the wire.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// Status code (0 if nothing parseable came back).
    pub status: u16,
    /// Header names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the body ended properly: the final chunk of a chunked body arrived, or
    /// a `Content-Length` body is whole.
    pub complete: bool,
}

impl HttpResponse {
    /// Parses a whole response as read from the socket.
    pub fn parse(raw: &[u8]) -> HttpResponse {
        let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return HttpResponse {
                status: 0,
                headers: Vec::new(),
                body: Vec::new(),
                complete: false,
            };
        };
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let rest = &raw[split + 4..];
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let (body, complete) = if chunked {
            dechunk(rest)
        } else if let Some(length) = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
        {
            (
                rest[..rest.len().min(length)].to_vec(),
                rest.len() >= length,
            )
        } else {
            (rest.to_vec(), true)
        };
        HttpResponse {
            status,
            headers,
            body,
            complete,
        }
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("the body is UTF-8")
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "the body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `error.code` of a JSON error.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not a JSON error: {}", String::from_utf8_lossy(&self.body)))
            .to_owned()
    }

    /// The NDJSON body, one value per line (each line must parse on its own).
    pub fn ndjson(&self) -> Vec<serde_json::Value> {
        let text = self.text();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "NDJSON must end with a newline"
        );
        text.lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("line is not JSON ({err}): {line}"))
            })
            .collect()
    }

    /// Event ids of a list page.
    pub fn event_ids(&self) -> Vec<i64> {
        self.json()["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events array: {}", self.text()))
            .iter()
            .map(|event| event["id"].as_i64().expect("numeric id"))
            .collect()
    }
}

/// De-chunks a chunked body; `complete` only if the terminating chunk arrived.
fn dechunk(mut rest: &[u8]) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return (body, false);
        };
        let size_text = String::from_utf8_lossy(&rest[..end]).into_owned();
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        else {
            return (body, false);
        };
        rest = &rest[end + 2..];
        if size == 0 {
            return (body, true);
        }
        if rest.len() < size + 2 {
            body.extend_from_slice(&rest[..rest.len().min(size)]);
            return (body, false);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// A user with a live token.
#[derive(Debug, Clone)]
pub struct Reader {
    /// The token.
    pub token: String,
    /// The token's id (the actor of its exports).
    pub token_id: Uuid,
    /// The user's e-mail.
    pub email: String,
}

/// Creates an organization with the CLI library (its admin role comes with it).
pub async fn create_org(db: &TestDb, slug: &str) -> Uuid {
    let slug: OrgSlug = slug.parse().expect("valid slug");
    admin::create_organization(db.pool(), &slug, None)
        .await
        .expect("creating the organization")
        .id
}

/// Adds a user with `roles` to `org` and gives it a token.
pub async fn reader(db: &TestDb, org: &str, email: &str, roles: &[&str]) -> Reader {
    let parsed: Email = email.parse().expect("valid e-mail");
    admin::add_user(db.pool(), org, &parsed, roles)
        .await
        .expect("adding the user");
    let token = admin::create_token(db.pool(), org, email, None, None)
        .await
        .expect("creating the token");
    Reader {
        token: token.token.expose().to_owned(),
        token_id: token.id,
        email: email.to_owned(),
    }
}

/// Creates a custom role.
pub async fn create_role(db: &TestDb, org: &str, name: &str, permissions: &[&str]) {
    let name: RoleName = name.parse().expect("valid role name");
    admin::create_role(db.pool(), org, &name, permissions)
        .await
        .expect("creating the role");
}

/// An organization `acme-dev` with an admin reader, and a server.
pub async fn acme(db: &TestDb) -> (Uuid, Reader) {
    let org = create_org(db, "acme-dev").await;
    let reader = reader(db, "acme-dev", "ops@example.com", &["admin"]).await;
    (org, reader)
}

/// The `organization.audit.export_created` events of an organization, oldest first:
/// (actor_type, actor_id, actor_email, metadata).
pub async fn export_events(
    db: &TestDb,
    org: Uuid,
) -> Vec<(String, String, Option<String>, serde_json::Value)> {
    db.client()
        .await
        .query(
            "SELECT actor_type, actor_id, actor_email, metadata FROM audit_events
             WHERE organization_id = $1 AND event_type = 'organization.audit.export_created'
             ORDER BY id",
            &[&org],
        )
        .await
        .expect("reading export events")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}
