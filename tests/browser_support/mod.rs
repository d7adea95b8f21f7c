//! A real browser for the console tests: Debian's headless Chromium driven by
//! `chromedriver` over the W3C WebDriver protocol (plain JSON over HTTP on loopback,
//! spoken with the API tests' own HTTP client, so no WebDriver crate is needed).
//!
//! Without `chromium` and `chromedriver` the tests are skipped with a message, except
//! under `CI=true`, where that is a failure (`scripts/test` installs both).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::api_support::{Client, HttpResponse};

/// The key of an element reference in WebDriver answers.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a wait for the page gives up after (a bound on a hang, not a timing claim).
pub const WAIT: Duration = Duration::from_secs(30);

/// The Chromium binary and its driver, or `None` (with the reason printed) when they
/// are not installed; under `CI=true` a missing one fails the test instead.
pub fn installed() -> Option<(PathBuf, PathBuf)> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|path| path.is_file());
    let chromium = find(&["/usr/bin/chromium", "/usr/lib/chromium/chromium"]);
    let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ => {
            let message = "the browser tests need Debian's chromium and chromium-driver \
                           (apt-get install chromium chromium-driver; scripts/test installs them)";
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("{message}");
            }
            eprintln!("SKIPPED: {message}");
            None
        }
    }
}

/// One headless Chromium session; closed, with its driver, when dropped.
pub struct Browser {
    driver: Child,
    client: Client,
    session: String,
    /// Where downloads land.
    pub downloads: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and a fresh headless Chromium (new profile, downloads
    /// into `downloads` without asking), or `None` when they are not installed.
    pub async fn start(downloads: &Path) -> Option<Browser> {
        let (chromium, driver_bin) = installed()?;
        let port = crate::support::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let client = Client {
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut browser = Browser {
            driver,
            client,
            session: String::new(),
            downloads: downloads.to_path_buf(),
            _profile: profile,
        };
        let deadline = Instant::now() + WAIT;
        while !browser.driver_ready().await {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile_dir = browser._profile.path().display().to_string();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // A dialog must stay open so that the test can see it, not be dismissed.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,900",
                    format!("--user-data-dir={profile_dir}"),
                ],
                "prefs": {
                    "download.default_directory": downloads,
                    "download.prompt_for_download": false,
                    "download.directory_upgrade": true,
                    "safebrowsing.enabled": false,
                },
            },
        }}});
        let answer = browser
            .command("POST", "/session", Some(capabilities))
            .await;
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        browser
            .cdp(
                "Browser.setDownloadBehavior",
                json!({"behavior": "allow", "downloadPath": downloads}),
            )
            .await;
        Some(browser)
    }

    async fn driver_ready(&self) -> bool {
        if std::net::TcpStream::connect(self.client.addr).is_err() {
            return false;
        }
        let response = self.send("GET", "/status", None).await;
        response.status == 200
            && serde_json::from_slice::<Value>(&response.body)
                .is_ok_and(|v| v["value"]["ready"] == json!(true))
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> HttpResponse {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.client.addr,
            body.len()
        );
        exchange(self.client.addr, request.as_bytes()).await
    }

    /// A WebDriver command; panics on a WebDriver error. Returns `value`.
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let response = self.send(method, path, body).await;
        let value: Value = serde_json::from_slice(&response.body).unwrap_or_else(|err| {
            panic!(
                "WebDriver {method} {path}: not JSON ({err}): {}",
                String::from_utf8_lossy(&response.body)
            )
        });
        assert_eq!(
            response.status, 200,
            "WebDriver {method} {path} failed: {value}"
        );
        value["value"].clone()
    }

    async fn session_command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.command(method, &path, body).await
    }

    /// A DevTools command through chromedriver.
    pub async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.session_command(
            "POST",
            "/goog/cdp/execute",
            Some(json!({"cmd": cmd, "params": params})),
        )
        .await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.session_command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// The current URL.
    pub async fn url(&self) -> String {
        self.session_command("GET", "/url", None)
            .await
            .as_str()
            .expect("a URL")
            .to_owned()
    }

    /// Reloads the page.
    pub async fn refresh(&self) {
        self.session_command("POST", "/refresh", Some(json!({})))
            .await;
    }

    /// The browser's back button.
    pub async fn back(&self) {
        self.session_command("POST", "/back", Some(json!({}))).await;
    }

    /// Runs `script` (a function body; `arguments` holds `args`) and returns its value.
    pub async fn execute(&self, script: &str, args: Value) -> Value {
        self.session_command(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
        .await
    }

    /// The element matching the CSS selector (panics if there is none).
    pub async fn find(&self, css: &str) -> String {
        let value = self
            .session_command(
                "POST",
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        value[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {value}"))
            .to_owned()
    }

    /// Clicks the element matching `css`.
    pub async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.session_command(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    /// Replaces the text of the input matching `css` with `text`, typed as keys.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.session_command(
            "POST",
            &format!("/element/{element}/clear"),
            Some(json!({})),
        )
        .await;
        self.session_command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Sends keys to the element matching `css` (WebDriver key codes allowed).
    pub async fn keys(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.session_command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// The text of an open dialog (`alert`, `confirm`, `prompt`), if one is open.
    pub async fn dialog(&self) -> Option<String> {
        let path = format!("/session/{}/alert/text", self.session);
        let response = self.send("GET", &path, None).await;
        let value: Value = serde_json::from_slice(&response.body).ok()?;
        (response.status == 200).then(|| value["value"].to_string())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let value = self.session_command("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(value.as_str().expect("base64 PNG"))
            .expect("valid base64")
    }

    /// Resizes the window.
    pub async fn window_size(&self, width: u32, height: u32) {
        self.session_command(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Polls `script` until it returns something truthy; returns that.
    pub async fn wait_for(&self, what: &str, script: &str, args: Value) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.execute(script, args.clone()).await;
            if !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0)
            {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends one request and reads one `Content-Length` answer: chromedriver says
/// `Connection: close` but keeps the connection open, so reading to the end would hang.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> HttpResponse {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let read = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connecting to chromedriver");
        stream
            .write_all(request)
            .await
            .expect("sending to chromedriver");
        let mut raw = Vec::new();
        let mut buffer = [0u8; 64 * 1024];
        loop {
            let n = stream
                .read(&mut buffer)
                .await
                .expect("reading chromedriver");
            raw.extend_from_slice(&buffer[..n]);
            let response = HttpResponse::parse(&raw);
            let whole = response.status != 0
                && response.header("content-length").is_some()
                && response.complete;
            if n == 0 || whole {
                return response;
            }
        }
    };
    // A bound on a hang: a screenshot or a page load answers well within it.
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("chromedriver answers within 120 s")
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session ends the browser (killing only the driver could leave it
        // running); a blocking request, as a destructor cannot await.
        if !self.session.is_empty() {
            if let Ok(mut stream) = std::net::TcpStream::connect(self.client.addr) {
                use std::io::{Read as _, Write as _};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                let _ = write!(
                    stream,
                    "DELETE /session/{} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                    self.session, self.client.addr
                );
                // One read: the answer is small, and the driver keeps the connection.
                let _ = stream.read(&mut [0u8; 4096]);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
