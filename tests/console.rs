//! The Audit logs page (`/`, `/orgs/{org}/audit`) in a real browser against the real
//! daemon binary and PostgreSQL, and the `/v1/orgs` endpoint it chooses with.
//!
//! The browser test is one Chromium session walking through every check in turn
//! (columns, filters against the API, paging, the URL, exports, XSS payloads, the
//! 401/403 screens, the chooser, a narrow window, a screenshot), so that the browser
//! starts once.

mod api_support;
mod browser_support;
mod common;
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api_support::{create_role, reader, Client, Reader, Server};
use browser_support::Browser;
use chrono::{DateTime, Duration as TimeDelta, SubsecRound as _, Utc};
use common::{NewEvent, TestDb};
use compartment_auditd::db::admin::{self, OrgSlug};
use compartment_auditd::http::console::CONTENT_SECURITY_POLICY;
use serde_json::{json, Value};
use support::DaemonConfig;
use uuid::Uuid;

/// Events of `acme-dev`, including the one with the XSS payloads.
const EVENTS: usize = 250;

/// The export cap the daemon runs with: more than the filtered exports below, fewer
/// than all events, so that the unfiltered export is refused.
const EXPORT_MAX_ROWS: &str = "200";

const EVENT_TYPES: &[&str] = &[
    "organization.user.invited",
    "organization.user.removed",
    "organization.role.created",
    "organization.git_source.sync_succeeded",
    "organization.settings.updated",
];

/// The payloads: if any ran, it would set `window.__xss` or open a dialog.
const XSS_EMAIL: &str = "<img src=x onerror=\"window.__xss='actor';alert('actor')\">@example.com";
const XSS_ACTOR_ID: &str = "<script>window.__xss='actor_id';alert(1)</script>";
const XSS_TARGET_TYPE: &str = "<b onmouseover=alert(2)>user</b>";
const XSS_TARGET_ID: &str = "<script>window.__xss='target'</script>";
const XSS_PROJECT: &str = "<svg onload=\"window.__xss='project'\">";
const XSS_META_EMAIL: &str = "<img src=x onerror=\"window.__xss='metadata';alert('m')\">";
const XSS_META_VIA: &str = "</pre><iframe src=\"javascript:window.__xss='via'\"></iframe>";

fn org_slug(slug: &str) -> OrgSlug {
    slug.parse().expect("valid slug")
}

/// A deterministic mix of types, actors, targets, projects and statuses, one minute
/// apart, the newest a minute ago; then the XSS event, the newest of all.
fn sample_events(org: Uuid, now: DateTime<Utc>) -> Vec<NewEvent> {
    let actors = [
        ("user", "usr_ops", Some("ops@example.com")),
        ("user", "usr_dev", Some("dev@example.com")),
        ("api_token", "tok_ci", None),
    ];
    let targets = [
        ("user", "usr_new"),
        ("role", "role_auditor"),
        ("git_source", "gs_main"),
    ];
    let mut events: Vec<NewEvent> = (0..EVENTS - 1)
        .map(|i| {
            let event_type = EVENT_TYPES[i % EVENT_TYPES.len()];
            let (actor_type, actor_id, email) = actors[i % actors.len()];
            let (target_type, target_id) = targets[(i / 2) % targets.len()];
            let metadata = match event_type {
                "organization.user.invited" => json!({
                    "email": format!("new{i}@example.com"),
                    "invited_via": "console",
                    "dropped_key": "not on the allowlist",
                }),
                "organization.role.created" => json!({
                    "role_name": format!("role {i}"),
                    "permissions": ["organization.audit.read"],
                }),
                "organization.git_source.sync_succeeded" => json!({
                    "repository": "acme/app", "branch": "main", "duration_ms": i,
                }),
                _ => json!({}),
            };
            let mut event = NewEvent::new(org, event_type)
                .occurred_at(now - TimeDelta::minutes((EVENTS - i) as i64))
                .actor(actor_type, actor_id, email)
                .target(target_type, &format!("{target_id}_{i}"))
                .status(["succeeded", "failed", "denied"][i % 3])
                .metadata(metadata);
            if i % 4 != 3 {
                event = event.project(["prj_alpha", "prj_beta", "prj_gamma"][i % 3]);
            }
            event
        })
        .collect();
    events.push(
        NewEvent::new(org, "organization.user.invited")
            .occurred_at(now - TimeDelta::seconds(1))
            .actor("user", XSS_ACTOR_ID, Some(XSS_EMAIL))
            .target(XSS_TARGET_TYPE, XSS_TARGET_ID)
            .project(XSS_PROJECT)
            .metadata(json!({"email": XSS_META_EMAIL, "invited_via": XSS_META_VIA})),
    );
    events
}

/// Lets the acme-dev user also hold `admin` in `beta`: Compartment's own schema lets
/// one user belong to several organizations, the reference schema keeps users per
/// organization, so this test database drops that one foreign key.
async fn grant_second_organization(db: &TestDb, email: &str, beta: Uuid) {
    let client = db.client().await;
    let constraint: String = client
        .query_one(
            "SELECT conname FROM pg_constraint
             WHERE conrelid = 'role_assignments'::regclass AND contype = 'f'
               AND confrelid = 'users'::regclass",
            &[],
        )
        .await
        .expect("the role_assignments → users foreign key")
        .get(0);
    client
        .batch_execute(&format!(
            "ALTER TABLE role_assignments DROP CONSTRAINT \"{constraint}\""
        ))
        .await
        .expect("dropping the foreign key");
    client
        .execute(
            "INSERT INTO role_assignments (organization_id, role_id, user_id)
             SELECT $1, r.id, u.id FROM roles r, users u
             WHERE r.organization_id = $1 AND r.name = 'admin' AND u.email = $2",
            &[&beta, &email],
        )
        .await
        .expect("assigning the admin role of the second organization");
}

/// The API's list of `org` for `query` (without limit), following every cursor.
async fn api_ids(client: &Client, token: &str, org: &str, query: &str, limit: u32) -> Vec<i64> {
    let response = client
        .get(
            &format!("/v1/orgs/{org}/audit/events?{query}&limit={limit}"),
            Some(token),
        )
        .await;
    assert_eq!(response.status, 200, "{}", response.text());
    response.event_ids()
}

/// Waits until the page has finished a load after `after` loads of the marked
/// document, or any load of a new document (a reload or a link starts counting
/// afresh); returns the state.
async fn loaded(browser: &Browser, after: u64) -> (u64, String) {
    let value = browser
        .wait_for(
            "the page to finish loading",
            "const loads = Number(document.body.dataset.loads || 0);
             const state = document.body.dataset.state;
             const done = window.__consoleTestMark ? loads > arguments[0] : loads >= 1;
             return done && state !== 'loading' ? [loads, state] : null;",
            json!([after]),
        )
        .await;
    (
        value[0].as_u64().expect("a count"),
        value[1].as_str().expect("a state").to_owned(),
    )
}

async fn loads(browser: &Browser) -> u64 {
    browser
        .execute(
            "return Number(document.body.dataset.loads || 0);",
            json!([]),
        )
        .await
        .as_u64()
        .unwrap_or(0)
}

/// Does `action` and waits for the load it causes; returns the state.
async fn after_load(browser: &Browser, action: impl AsyncFnOnce()) -> String {
    let before = loads(browser).await;
    browser
        .execute("window.__consoleTestMark = true;", json!([]))
        .await;
    action().await;
    loaded(browser, before).await.1
}

async fn row_ids(browser: &Browser) -> Vec<i64> {
    browser
        .execute(
            "return [...document.querySelectorAll('#rows tr')].map(r => Number(r.dataset.eventId));",
            json!([]),
        )
        .await
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_i64().expect("an id"))
        .collect()
}

async fn sign_in(browser: &Browser, token: &str) -> String {
    browser.type_into("#token", token).await;
    after_load(browser, async || browser.click("#signin-form button").await).await
}

async fn sign_out(browser: &Browser) {
    after_load(browser, async || browser.click("#sign-out").await).await;
}

async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .execute(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Waits for one new finished download in `dir` that is not in `seen`; returns its path.
async fn downloaded(dir: &Path, seen: &mut BTreeSet<PathBuf>) -> PathBuf {
    let found = support::wait_for(browser_support::WAIT, async || {
        let entries = std::fs::read_dir(dir).ok()?;
        let paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        if paths
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "crdownload"))
        {
            return None;
        }
        paths.into_iter().find(|p| !seen.contains(p))
    })
    .await
    .expect("the export was downloaded");
    seen.insert(found.clone());
    found
}

#[test]
fn the_audit_page_in_a_real_browser() {
    if browser_support::installed().is_none() {
        return;
    }
    // The walk-through is one deep future whose debug-build frames pass the test
    // thread's 2 MiB stack: give it a thread and runtime with room.
    const STACK: usize = 32 << 20;
    let thread = std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_stack_size(STACK)
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(walk_through_the_page())
        })
        .expect("a thread");
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn walk_through_the_page() {
    let db = TestDb::new().await;
    let acme = admin::create_organization(db.pool(), &org_slug("acme-dev"), Some("Acme Dev"))
        .await
        .expect("acme-dev")
        .id;
    let beta = admin::create_organization(db.pool(), &org_slug("beta-ops"), Some("Beta Ops"))
        .await
        .expect("beta-ops")
        .id;
    let admin_reader: Reader = reader(&db, "acme-dev", "ops@example.com", &["admin"]).await;
    create_role(&db, "acme-dev", "auditor", &["organization.audit.read"]).await;
    let auditor = reader(&db, "acme-dev", "auditor@example.com", &["auditor"]).await;
    create_role(&db, "acme-dev", "nothing", &[]).await;
    let outsider = reader(&db, "acme-dev", "outsider@example.com", &["nothing"]).await;
    grant_second_organization(&db, "ops@example.com", beta).await;

    let now = Utc::now().trunc_subsecs(3);
    let mut ids = db.insert_events(&sample_events(acme, now)).await;
    let beta_ids = db
        .insert_events(&[
            NewEvent::new(beta, "organization.settings.updated").occurred_at(now),
            NewEvent::new(beta, "organization.role.deleted").occurred_at(now),
        ])
        .await;
    ids.sort_unstable();
    let xss_id = *ids.last().expect("events");

    let tmp = tempfile::tempdir().expect("a temporary directory");
    let downloads = tmp.path().join("downloads");
    std::fs::create_dir(&downloads).expect("the download directory");
    let daemon = DaemonConfig {
        sink_dir: None,
        ..DaemonConfig::new(db.url(), tmp.path(), tmp.path())
    }
    .with("COMPARTMENT_AUDIT_HTTP_EXPORT_MAX_ROWS", EXPORT_MAX_ROWS)
    .spawn();
    assert!(
        daemon.wait_ready(Duration::from_secs(30)).await,
        "{}",
        daemon.log_text()
    );
    let base = format!("http://127.0.0.1:{}", daemon.port);
    let api = Client {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], daemon.port)),
    };
    let token = admin_reader.token.as_str();

    let browser = Browser::start(&downloads)
        .await
        .expect("chromium was found above");

    // --- sign in; the newest events with every documented column -----------------
    browser.goto(&format!("{base}/orgs/acme-dev/audit")).await;
    loaded(&browser, 0).await;
    assert_eq!(
        browser
            .execute("return document.body.dataset.state;", json!([]))
            .await,
        json!("signin")
    );
    assert_eq!(sign_in(&browser, token).await, "ready");
    let storage = browser
        .execute(
            "return [sessionStorage.getItem('compartment-auditd.token'), document.cookie];",
            json!([]),
        )
        .await;
    assert_eq!(
        storage,
        json!([token, ""]),
        "token in sessionStorage, no cookie"
    );
    let headers = browser
        .execute(
            "return [...document.querySelectorAll('#events thead th')].map(th => th.textContent);",
            json!([]),
        )
        .await;
    assert_eq!(
        headers,
        json!([
            "Time (UTC)",
            "Event type",
            "Actor",
            "Target",
            "Project",
            "Status",
            "Metadata"
        ])
    );
    let first_page = api_ids(&api, token, "acme-dev", "", 100).await;
    assert_eq!(row_ids(&browser).await, first_page);
    assert_eq!(first_page.len(), 100);

    // Each column of a row says what the API says, as text.
    let api_page = api
        .get("/v1/orgs/acme-dev/audit/events?limit=3", Some(token))
        .await
        .json();
    let event = &api_page["events"][1];
    let cells = browser
        .execute(
            "const row = document.querySelector(`#rows tr[data-event-id='${arguments[0]}']`);
             return [...row.cells].map(td => td.textContent);",
            json!([event["id"]]),
        )
        .await;
    let occurred = event["occurred_at"].as_str().expect("occurred_at");
    assert_eq!(
        cells[0],
        json!(occurred.replace('T', " ").trim_end_matches('Z'))
    );
    assert_eq!(cells[1], event["event_type"]);
    assert!(cells[2].as_str().expect("actor").starts_with(
        event["actor"]["email"]
            .as_str()
            .unwrap_or(event["actor"]["id"].as_str().expect("actor id"))
    ));
    assert!(cells[3]
        .as_str()
        .expect("target")
        .starts_with(event["target"]["type"].as_str().expect("target type")));
    let project = event["project_id"].as_str().unwrap_or("—");
    assert_eq!(cells[4], json!(project));
    assert_eq!(cells[5], event["status"]);
    let time_title = browser
        .execute(
            "return document.querySelector('#rows tr time').title;",
            json!([]),
        )
        .await;
    assert!(time_title
        .as_str()
        .expect("title")
        .ends_with("(local time)"));
    // Metadata: expandable, exactly the API's allowlisted JSON.
    let newest_ten = api
        .get("/v1/orgs/acme-dev/audit/events?limit=10", Some(token))
        .await
        .json();
    let metadata_row = newest_ten["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["event_type"] == "organization.role.created")
        .cloned()
        .expect("a role.created event among the newest ten");
    let metadata_text = browser
        .execute(
            "const row = document.querySelector(`#rows tr[data-event-id='${arguments[0]}']`);
             row.querySelector('summary').click();
             return [row.querySelector('details').open, row.querySelector('pre').textContent];",
            json!([metadata_row["id"]]),
        )
        .await;
    assert_eq!(metadata_text[0], json!(true));
    let shown: Value = serde_json::from_str(metadata_text[1].as_str().expect("pre text"))
        .expect("the metadata is shown as JSON");
    assert_eq!(shown, metadata_row["metadata"]);

    // --- XSS payloads are text and run nothing ------------------------------------
    assert_eq!(first_page[0], xss_id, "the XSS event is the newest");
    let xss = browser
        .execute(
            "const row = document.querySelector(`#rows tr[data-event-id='${arguments[0]}']`);
             row.querySelector('summary').click();
             return {
               cells: [...row.cells].map(td => td.textContent),
               injected: document.querySelectorAll('#main img, #main svg, #main b, #main iframe, #main script, script:not([src])').length,
               scripts: document.scripts.length,
               flag: window.__xss === undefined ? null : String(window.__xss),
             };",
            json!([xss_id]),
        )
        .await;
    let cells = &xss["cells"];
    assert!(
        cells[2].as_str().expect("actor").contains(XSS_EMAIL),
        "{cells}"
    );
    assert!(
        cells[2].as_str().expect("actor").contains(XSS_ACTOR_ID),
        "{cells}"
    );
    assert!(
        cells[3].as_str().expect("target").contains(XSS_TARGET_TYPE),
        "{cells}"
    );
    assert!(
        cells[3].as_str().expect("target").contains(XSS_TARGET_ID),
        "{cells}"
    );
    assert_eq!(cells[4], json!(XSS_PROJECT));
    let shown = cells[6].as_str().expect("metadata");
    let metadata: Value = serde_json::from_str(&shown[shown.find('{').expect("JSON")..])
        .expect("the metadata is JSON text");
    assert_eq!(
        metadata, api_page["events"][0]["metadata"],
        "the API's metadata"
    );
    assert_eq!(metadata["email"], json!(XSS_META_EMAIL));
    assert_eq!(xss["injected"], json!(0), "no element was injected");
    assert_eq!(xss["scripts"], json!(1), "only the page's own script");
    assert_eq!(xss["flag"], Value::Null, "no payload ran");
    assert_eq!(browser.dialog().await, None, "no dialog opened");

    // --- paging: 250 events at 100 a page, each once; back and first page ----------
    let mut seen = row_ids(&browser).await;
    for page in 2..=3 {
        let state = after_load(&browser, async || browser.click("#next-page").await).await;
        assert_eq!(state, "ready");
        seen.extend(row_ids(&browser).await);
        assert_eq!(
            text_of(&browser, "#page-label").await,
            format!("Page {page}")
        );
        assert!(browser.url().await.contains(&format!("page={page}")));
    }
    let next_disabled = browser
        .execute(
            "return document.getElementById('next-page').disabled;",
            json!([]),
        )
        .await;
    assert_eq!(next_disabled, json!(true), "the last page has no next");
    assert_eq!(seen.len(), EVENTS, "three pages hold every event");
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, ids, "each event exactly once, none of beta-ops");
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    // Reload keeps the page (the cursor is in the URL); back returns to page 2.
    let third_page = row_ids(&browser).await;
    after_load(&browser, async || browser.refresh().await).await;
    assert_eq!(row_ids(&browser).await, third_page);
    after_load(&browser, async || browser.back().await).await;
    assert_eq!(row_ids(&browser).await, newest_first[100..200].to_vec());
    assert_eq!(text_of(&browser, "#page-label").await, "Page 2");
    after_load(&browser, async || browser.click("#first-page").await).await;
    assert_eq!(row_ids(&browser).await, first_page);

    // --- each filter gives exactly the API's rows; the URL carries it --------------
    let from = (now - TimeDelta::minutes(60)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let to = (now - TimeDelta::minutes(200)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let filters: &[(&str, &str)] = &[
        ("from", &from),
        ("to", &to),
        ("event", "organization.user.*"),
        ("event", "organization.role.created"),
        ("actor", "dev@example.com"),
        ("actor", "tok_ci"),
        ("target_type", "git_source"),
        ("project_id", "prj_beta"),
    ];
    for (name, value) in filters {
        after_load(&browser, async || browser.click("#clear").await).await;
        browser.type_into(&format!("#f-{name}"), value).await;
        let state = after_load(&browser, async || browser.click("#apply").await).await;
        let query = format!("{name}={}", urlencode(value));
        let expected = api_ids(&api, token, "acme-dev", &query, 100).await;
        assert!(
            !expected.is_empty() && expected.len() < EVENTS,
            "{query} narrows"
        );
        assert_eq!(state, "ready", "{query}");
        assert_eq!(row_ids(&browser).await, expected, "{query}");
        let url = browser.url().await;
        assert!(url.contains(&query), "{url} carries {query}");
    }
    // Several at once, reloaded: the form and the rows come back from the URL.
    after_load(&browser, async || browser.click("#clear").await).await;
    browser.type_into("#f-event", "organization.user.*").await;
    browser.type_into("#f-actor", "ops@example.com").await;
    browser.type_into("#f-project_id", "prj_alpha").await;
    after_load(&browser, async || {
        browser.keys("#f-project_id", "\u{E007}").await
    })
    .await;
    let query = "event=organization.user.*&actor=ops@example.com&project_id=prj_alpha";
    let expected = api_ids(&api, token, "acme-dev", query, 100).await;
    assert!(!expected.is_empty());
    assert_eq!(row_ids(&browser).await, expected);
    after_load(&browser, async || browser.refresh().await).await;
    assert_eq!(row_ids(&browser).await, expected);
    let form = browser
        .execute(
            "return ['f-event','f-actor','f-project_id'].map(id => document.getElementById(id).value);",
            json!([]),
        )
        .await;
    assert_eq!(
        form,
        json!(["organization.user.*", "ops@example.com", "prj_alpha"])
    );
    // A filter that matches nothing: the empty state.
    after_load(&browser, async || browser.click("#clear").await).await;
    browser.type_into("#f-project_id", "prj_none").await;
    let state = after_load(&browser, async || browser.click("#apply").await).await;
    assert_eq!(state, "empty");
    let empty_visible = browser
        .execute(
            "return !document.getElementById('empty').hidden;",
            json!([]),
        )
        .await;
    assert_eq!(empty_visible, json!(true));
    // A bad value: the API's error, naming the parameter, and no rows.
    browser.type_into("#f-from", "yesterday").await;
    let state = after_load(&browser, async || browser.click("#apply").await).await;
    assert_eq!(state, "invalid");
    assert!(text_of(&browser, "#status").await.contains("(from)"));

    // --- page size -------------------------------------------------------------------
    after_load(&browser, async || browser.click("#clear").await).await;
    after_load(&browser, async || {
        browser
            .execute(
                "const s = document.getElementById('f-limit'); s.value = '25';
                 s.dispatchEvent(new Event('change'));",
                json!([]),
            )
            .await;
    })
    .await;
    assert_eq!(row_ids(&browser).await, first_page[..25].to_vec());
    assert!(browser.url().await.contains("limit=25"));

    // --- a screenshot with sample events ----------------------------------------------
    // Before the exports (whose own events would fill the top rows), without the
    // XSS event: the view a README can show.
    let before_xss =
        (now - TimeDelta::seconds(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    browser.window_size(1200, 1000).await;
    after_load(&browser, async || {
        browser
            .goto(&format!(
                "{base}/orgs/acme-dev/audit?to={before_xss}&limit=25"
            ))
            .await
    })
    .await;
    browser
        .execute(
            "document.querySelectorAll('#rows summary')[1]?.click(); window.scrollTo(0, 0);",
            json!([]),
        )
        .await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("audit-page.png");
    std::fs::write(&shot, &png).expect("writing the screenshot");
    eprintln!("screenshot: {}", shot.display());
    browser.window_size(1280, 900).await;

    // --- exports: the file equals the API's export; the cap's words ----------------
    let mut downloaded_files = BTreeSet::new();
    after_load(&browser, async || {
        browser
            .goto(&format!(
                "{base}/orgs/acme-dev/audit?event=organization.user.*"
            ))
            .await
    })
    .await;
    for format in ["ndjson", "csv"] {
        browser.click(&format!("#export-{format}")).await;
        let file = downloaded(&downloads, &mut downloaded_files).await;
        assert!(
            file.to_string_lossy().ends_with(&format!(".{format}")),
            "{file:?}"
        );
        let api_export = api
            .get(
                &format!(
                    "/v1/orgs/acme-dev/audit/export?event=organization.user.*&format={format}"
                ),
                Some(token),
            )
            .await;
        assert_eq!(api_export.status, 200);
        let content = std::fs::read(&file).expect("reading the download");
        assert!(!content.is_empty());
        assert_eq!(
            content, api_export.body,
            "{format}: the download is the API's export"
        );
    }
    after_load(&browser, async || browser.click("#clear").await).await;
    browser.click("#export-ndjson").await;
    browser
        .wait_for(
            "the refused export",
            "return document.body.dataset.export === 'refused';",
            json!([]),
        )
        .await;
    let refused = api.get("/v1/orgs/acme-dev/audit/export", Some(token)).await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.error_code(), "audit_export_too_large");
    assert_eq!(
        text_of(&browser, "#export-error").await,
        refused.json()["error"]["message"]
            .as_str()
            .expect("message")
    );

    // --- keyboard and labels ---------------------------------------------------------
    let unlabelled = browser
        .execute(
            "return [...document.querySelectorAll('input, select')]
               .filter(e => e.labels.length === 0).map(e => e.id);",
            json!([]),
        )
        .await;
    assert_eq!(unlabelled, json!([]), "every control has a label");
    after_load(&browser, async || {
        browser
            .execute("document.getElementById('next-page').focus();", json!([]))
            .await;
        browser.keys("#next-page", "\u{E007}").await;
    })
    .await;
    assert_eq!(text_of(&browser, "#page-label").await, "Page 2");

    // --- a narrow window: cards, no sideways scrolling -------------------------------
    browser.window_size(420, 900).await;
    let narrow = browser
        .wait_for(
            "the narrow layout",
            "const head = getComputedStyle(document.querySelector('#events thead'));
             const wide = document.documentElement.scrollWidth > window.innerWidth + 1;
             return head.position === 'absolute' ? {wide} : null;",
            json!([]),
        )
        .await;
    assert_eq!(
        narrow,
        json!({"wide": false}),
        "no horizontal scrolling at 420 px"
    );
    let narrow_shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("audit-page-narrow.png");
    std::fs::write(&narrow_shot, browser.screenshot().await).expect("writing the screenshot");
    browser.window_size(1280, 900).await;

    // --- sign out; 401; 403 ------------------------------------------------------------
    sign_out(&browser).await;
    let forgotten = browser
        .execute("return sessionStorage.length;", json!([]))
        .await;
    assert_eq!(forgotten, json!(0));
    assert_eq!(
        sign_in(&browser, "cat_not-a-real-token").await,
        "unauthorized"
    );
    assert!(text_of(&browser, "#e401-title").await.contains("401"));
    let cleared = browser
        .execute("return sessionStorage.length;", json!([]))
        .await;
    assert_eq!(cleared, json!(0), "a refused token is forgotten");
    after_load(&browser, async || browser.click("#e401-again").await).await;
    assert_eq!(sign_in(&browser, &outsider.token).await, "forbidden");
    let forbidden = text_of(&browser, "#screen-403").await;
    assert!(forbidden.contains("organization.audit.read"), "{forbidden}");
    assert!(forbidden.contains("acme-dev"), "{forbidden}");
    assert_eq!(row_ids(&browser).await, Vec::<i64>::new());
    sign_out(&browser).await;

    // --- the organization chooser ---------------------------------------------------
    after_load(&browser, async || browser.goto(&format!("{base}/")).await).await;
    assert_eq!(sign_in(&browser, token).await, "chooser");
    let choices = browser
        .execute(
            "return [...document.querySelectorAll('#org-list a')]
               .map(a => [a.getAttribute('href'), a.textContent]);",
            json!([]),
        )
        .await;
    assert_eq!(
        choices,
        json!([
            ["/orgs/acme-dev/audit", "Acme Dev acme-dev"],
            ["/orgs/beta-ops/audit", "Beta Ops beta-ops"]
        ])
    );
    let state = after_load(&browser, async || {
        browser.click("#org-list li:nth-child(2) a").await
    })
    .await;
    assert_eq!(state, "ready");
    assert!(browser.url().await.ends_with("/orgs/beta-ops/audit"));
    let mut beta_rows = row_ids(&browser).await;
    beta_rows.sort_unstable();
    assert_eq!(beta_rows, beta_ids);
    // A token of one organization goes straight to it.
    sign_out(&browser).await;
    after_load(&browser, async || browser.goto(&format!("{base}/")).await).await;
    browser.type_into("#token", &auditor.token).await;
    browser.click("#signin-form button").await;
    browser
        .wait_for(
            "the redirect to the only organization",
            "return location.pathname === '/orgs/acme-dev/audit' && document.body.dataset.state === 'ready';",
            json!([]),
        )
        .await;
    // (The exports above added events of their own: compare with the API now.)
    let newest = api_ids(&api, &auditor.token, "acme-dev", "", 100).await;
    assert_eq!(row_ids(&browser).await, newest);
    assert_eq!(
        browser.dialog().await,
        None,
        "no dialog opened at any point"
    );
    drop(browser);
    drop(daemon);
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// --- without a browser ---------------------------------------------------------------

#[tokio::test]
async fn the_page_is_served_with_strict_headers_and_can_be_turned_off() {
    let db = TestDb::new().await;
    let server = Server::start(&db, |_| {}).await;
    for path in [
        "/",
        "/orgs/acme-dev/audit",
        "/assets/console.js",
        "/assets/console.css",
    ] {
        let response = server.get(path, None).await;
        assert_eq!(response.status, 200, "{path}");
        assert_eq!(
            response.header("content-security-policy"),
            Some(CONTENT_SECURITY_POLICY),
            "{path}"
        );
        assert_eq!(response.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(response.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(response.header("set-cookie"), None);
    }
    assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
    assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    let page = server.get("/orgs/acme-dev/audit", None).await;
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert_eq!(server.get("/orgs/Not_A_Slug/audit", None).await.status, 404);
    let head = server.request("HEAD", "/orgs/acme-dev/audit", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(page.body.len().to_string().as_str())
    );
    let post = server.request("POST", "/orgs/acme-dev/audit", &[]).await;
    assert_eq!(post.status, 405);
    server.stop().await;

    let off = Server::start(&db, |s| s.http.console_enabled = false).await;
    for path in ["/", "/orgs/acme-dev/audit", "/assets/console.js"] {
        let response = off.get(path, None).await;
        assert_eq!(response.status, 404, "{path}");
        assert_eq!(response.error_code(), "not_found");
    }
    assert_eq!(off.get("/v1/orgs", None).await.status, 401, "the API stays");
    off.stop().await;
}

#[tokio::test]
async fn v1_orgs_lists_the_organizations_a_token_may_read() {
    let db = TestDb::new().await;
    let acme = api_support::create_org(&db, "acme-dev").await;
    let _ = acme;
    let beta = admin::create_organization(db.pool(), &org_slug("beta-ops"), Some("Beta Ops"))
        .await
        .expect("beta-ops")
        .id;
    api_support::create_org(&db, "gamma").await;
    let ops = reader(&db, "acme-dev", "ops@example.com", &["admin"]).await;
    create_role(&db, "acme-dev", "nothing", &[]).await;
    let outsider = reader(&db, "acme-dev", "outsider@example.com", &["nothing"]).await;
    let server = Server::start(&db, |_| {}).await;

    let listed = server.get("/v1/orgs", Some(&ops.token)).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("cache-control"), Some("no-store"));
    assert_eq!(
        listed.json(),
        json!({"organizations": [{"slug": "acme-dev", "name": "acme-dev"}]})
    );
    // A role without the permission: a valid token that may read nothing.
    let none = server.get("/v1/orgs", Some(&outsider.token)).await;
    assert_eq!(
        (none.status, none.json()),
        (200, json!({"organizations": []}))
    );
    // The same rule as the events' permission check, also across organizations.
    grant_second_organization(&db, "ops@example.com", beta).await;
    let both = server.get("/v1/orgs", Some(&ops.token)).await.json();
    assert_eq!(
        both,
        json!({"organizations": [
            {"slug": "acme-dev", "name": "acme-dev"},
            {"slug": "beta-ops", "name": "Beta Ops"}
        ]})
    );
    let events = server
        .get("/v1/orgs/beta-ops/audit/events", Some(&ops.token))
        .await;
    assert_eq!(events.status, 200);
    assert_eq!(
        server
            .get("/v1/orgs/gamma/audit/events", Some(&ops.token))
            .await
            .status,
        403
    );
    // 401 without a valid token; parameters are refused, named.
    let missing = server.get("/v1/orgs", None).await;
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").is_some());
    assert_eq!(server.get("/v1/orgs", Some("cat_nope")).await.status, 401);
    let with_query = server.get("/v1/orgs?limit=5", Some(&ops.token)).await;
    assert_eq!(with_query.status, 400);
    assert_eq!(with_query.json()["error"]["parameter"], json!("limit"));
    let post = server
        .request(
            "POST",
            "/v1/orgs",
            &[("Authorization", &format!("Bearer {}", ops.token))],
        )
        .await;
    assert_eq!(post.status, 405);
    server.stop().await;
}
