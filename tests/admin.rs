//! Administration commands (`org`, `user`, `role`, `token`) through the real binary,
//! and the token lookup and permission check the `/v1` API relies on.

mod common;

use common::TestDb;
use compartment_auditd::db::admin::{
    self, AuditRetention, Email, OrgSlug, RoleName, PERMISSION_AUDIT_READ,
};
use serde_json::json;
use uuid::Uuid;

const READ: &str = PERMISSION_AUDIT_READ;

/// Runs the CLI, asserts success, returns stdout.
async fn ok(db: &TestDb, args: &[&str]) -> String {
    let (status, stdout, stderr) = db.cli(args).await;
    assert!(status.success(), "{args:?} failed: {stdout}{stderr}");
    stdout
}

/// Runs the CLI, asserts exit status 1 with nothing on stdout, returns stderr.
async fn fails(db: &TestDb, args: &[&str]) -> String {
    let (status, stdout, stderr) = db.cli(args).await;
    assert_eq!(status.code(), Some(1), "{args:?}: {stdout}{stderr}");
    assert_eq!(stdout, "", "{args:?}");
    stderr
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    db.client()
        .await
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|err| panic!("{sql}: {err}"))
        .get(0)
}

async fn retention_columns(db: &TestDb, slug: &str) -> (String, Option<i32>) {
    let row = db
        .client()
        .await
        .query_one(
            "SELECT audit_retention_mode, audit_retention_days FROM organizations WHERE slug = $1",
            &[&slug],
        )
        .await
        .expect("organization exists");
    (row.get(0), row.get(1))
}

async fn settings_events(
    db: &TestDb,
) -> Vec<(
    String,
    String,
    String,
    Option<String>,
    String,
    serde_json::Value,
)> {
    db.client()
        .await
        .query(
            "SELECT event_type, actor_type, actor_id, actor_email, target_type, metadata
             FROM audit_events WHERE event_type = 'organization.settings.updated' ORDER BY id",
            &[],
        )
        .await
        .expect("audit_events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

#[tokio::test]
async fn org_create_makes_an_organization_with_its_admin_role() {
    let db = TestDb::new().await;
    let stdout = ok(
        &db,
        &[
            "org",
            "create",
            "--slug",
            "acme-dev",
            "--name",
            "Acme (dev)",
        ],
    )
    .await;
    assert!(
        stdout.starts_with("Created organization acme-dev ("),
        "{stdout}"
    );
    ok(&db, &["org", "create", "--slug", "globex"]).await;

    let rows = db
        .client()
        .await
        .query(
            "SELECT o.slug, o.name, o.audit_retention_mode, r.name, r.builtin
             FROM organizations o JOIN roles r ON r.organization_id = o.id ORDER BY o.slug",
            &[],
        )
        .await
        .expect("select");
    let rows: Vec<(String, String, String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .collect();
    assert_eq!(
        rows,
        vec![
            (
                "acme-dev".into(),
                "Acme (dev)".into(),
                "inherit".into(),
                "admin".into(),
                true
            ),
            // The name defaults to the slug.
            (
                "globex".into(),
                "globex".into(),
                "inherit".into(),
                "admin".into(),
                true
            ),
        ]
    );
}

#[tokio::test]
async fn org_create_rejects_duplicates_and_bad_slugs() {
    let db = TestDb::new().await;
    ok(&db, &["org", "create", "--slug", "acme"]).await;

    let stderr = fails(&db, &["org", "create", "--slug", "acme"]).await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"acme\" already exists\n"
    );

    let too_long = "a".repeat(64);
    for bad in ["Acme", "acme_dev", "acme-", "", "acme dev", &too_long] {
        let stderr = fails(&db, &["org", "create", "--slug", bad]).await;
        assert!(
            stderr.contains("invalid organization slug"),
            "{bad:?}: {stderr}"
        );
    }
    // `--slug -acme` would be read as an option; `=` passes it as a value.
    let stderr = fails(&db, &["org", "create", "--slug=-acme"]).await;
    assert!(stderr.contains("invalid organization slug"), "{stderr}");
    assert_eq!(count(&db, "SELECT count(*) FROM organizations").await, 1);
}

#[tokio::test]
async fn org_settings_get_shows_setting_and_effective_retention() {
    let db = TestDb::new().await;
    db.insert_org("acme").await;
    let stdout = ok(&db, &["org", "settings", "get", "--org", "acme"]).await;
    assert_eq!(
        stdout,
        "organization: acme\naudit_retention: inherit\neffective_retention: 90 days (install default, COMPARTMENT_AUDIT_RETENTION_DAYS)\n"
    );

    ok(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "acme",
            "--audit-retention",
            "365",
        ],
    )
    .await;
    let stdout = ok(&db, &["org", "settings", "get", "--org", "acme"]).await;
    assert!(
        stdout.contains("audit_retention: 365\neffective_retention: 365 days\n"),
        "{stdout}"
    );

    ok(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "acme",
            "--audit-retention",
            "indefinite",
        ],
    )
    .await;
    let stdout = ok(&db, &["org", "settings", "get", "--org", "acme"]).await;
    assert!(
        stdout.contains(
            "audit_retention: indefinite\neffective_retention: indefinite (never cleaned up)\n"
        ),
        "{stdout}"
    );

    let stderr = fails(&db, &["org", "settings", "get", "--org", "nope"]).await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"nope\" does not exist\n"
    );
}

#[tokio::test]
async fn org_settings_set_records_each_change_as_an_audit_event() {
    let db = TestDb::new().await;
    let org = db.insert_org("acme").await;

    let stdout = ok(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "acme",
            "--audit-retention",
            "365",
        ],
    )
    .await;
    assert!(
        stdout.starts_with("Changed audit_retention of acme from inherit to 365"),
        "{stdout}"
    );
    assert_eq!(
        retention_columns(&db, "acme").await,
        ("days".into(), Some(365))
    );
    ok(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "acme",
            "--audit-retention",
            "indefinite",
        ],
    )
    .await;
    assert_eq!(
        retention_columns(&db, "acme").await,
        ("indefinite".into(), None)
    );
    ok(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "acme",
            "--audit-retention",
            "inherit",
        ],
    )
    .await;
    assert_eq!(
        retention_columns(&db, "acme").await,
        ("inherit".into(), None)
    );

    let events = settings_events(&db).await;
    let expected_metadata = [
        json!({"changed_fields": ["audit_retention"], "audit_retention": {"from": "inherit", "to": 365}}),
        json!({"changed_fields": ["audit_retention"], "audit_retention": {"from": 365, "to": "indefinite"}}),
        json!({"changed_fields": ["audit_retention"], "audit_retention": {"from": "indefinite", "to": "inherit"}}),
    ];
    assert_eq!(events.len(), expected_metadata.len());
    for (event, metadata) in events.iter().zip(expected_metadata) {
        assert_eq!(
            *event,
            (
                "organization.settings.updated".to_owned(),
                "system".to_owned(),
                "compartment-auditd-cli".to_owned(),
                None,
                "organization".to_owned(),
                metadata
            )
        );
    }
    let target_ids: Vec<String> = db
        .client()
        .await
        .query("SELECT target_id FROM audit_events", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(target_ids.iter().all(|id| *id == org.to_string()));

    // Setting the current value again changes and records nothing.
    let stdout = ok(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "acme",
            "--audit-retention",
            "inherit",
        ],
    )
    .await;
    assert!(stdout.contains("nothing changed"), "{stdout}");
    assert_eq!(settings_events(&db).await.len(), 3);
}

#[tokio::test]
async fn org_settings_set_rejects_bad_values_and_changes_nothing() {
    let db = TestDb::new().await;
    db.insert_org("acme").await;
    ok(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "acme",
            "--audit-retention",
            "30",
        ],
    )
    .await;

    for bad in ["0", "-1", "abc", "", "1.5", "36501", "INHERIT"] {
        let stderr = fails(
            &db,
            &[
                "org",
                "settings",
                "set",
                "--org",
                "acme",
                "--audit-retention",
                bad,
            ],
        )
        .await;
        assert_eq!(
            stderr,
            format!(
                "compartment-auditd: invalid audit retention {bad:?}: use inherit, indefinite, or a number of days from 1 to 36500\n"
            ),
            "{bad:?}"
        );
    }
    let stderr = fails(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "acme",
            "--audit-retention=-1",
        ],
    )
    .await;
    assert!(
        stderr.contains("invalid audit retention \"-1\""),
        "{stderr}"
    );
    let stderr = fails(
        &db,
        &[
            "org",
            "settings",
            "set",
            "--org",
            "nope",
            "--audit-retention",
            "7",
        ],
    )
    .await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"nope\" does not exist\n"
    );

    assert_eq!(
        retention_columns(&db, "acme").await,
        ("days".into(), Some(30))
    );
    assert_eq!(
        settings_events(&db).await.len(),
        1,
        "only the valid change is recorded"
    );
}

#[tokio::test]
async fn user_add_assigns_roles_and_rejects_duplicates_and_unknowns() {
    let db = TestDb::new().await;
    db.insert_org("acme").await;
    ok(
        &db,
        &[
            "role",
            "create",
            "--org",
            "acme",
            "--name",
            "Auditors",
            "--permission",
            READ,
        ],
    )
    .await;

    let stdout = ok(
        &db,
        &[
            "user",
            "add",
            "--org",
            "acme",
            "--email",
            "Ops@Example.com",
            "--role",
            "admin",
            "--role",
            "auditors",
        ],
    )
    .await;
    assert!(stdout.contains("with roles: admin, Auditors."), "{stdout}");
    ok(
        &db,
        &["user", "add", "--org", "acme", "--email", "dev@example.com"],
    )
    .await;
    let assignments: Vec<(String, String)> = db
        .client()
        .await
        .query(
            "SELECT u.email, r.name FROM role_assignments ra
             JOIN users u ON u.id = ra.user_id JOIN roles r ON r.id = ra.role_id ORDER BY 1, 2",
            &[],
        )
        .await
        .expect("select")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        assignments,
        vec![
            ("Ops@Example.com".into(), "Auditors".into()),
            ("Ops@Example.com".into(), "admin".into())
        ]
    );

    let stderr = fails(
        &db,
        &["user", "add", "--org", "acme", "--email", "ops@example.COM"],
    )
    .await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"acme\" already has a user with e-mail \"ops@example.COM\"\n"
    );
    let stderr = fails(
        &db,
        &["user", "add", "--org", "nope", "--email", "x@example.com"],
    )
    .await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"nope\" does not exist\n"
    );
    // All or nothing: the unknown role leaves no user behind.
    let stderr = fails(
        &db,
        &[
            "user",
            "add",
            "--org",
            "acme",
            "--email",
            "new@example.com",
            "--role",
            "admin",
            "--role",
            "owners",
        ],
    )
    .await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"acme\" has no role named \"owners\"\n"
    );
    let stderr = fails(
        &db,
        &["user", "add", "--org", "acme", "--email", "not-an-address"],
    )
    .await;
    assert!(stderr.contains("invalid e-mail address"), "{stderr}");

    assert_eq!(count(&db, "SELECT count(*) FROM users").await, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM role_assignments").await, 2);
}

#[tokio::test]
async fn role_create_grants_only_known_listed_permissions() {
    let db = TestDb::new().await;
    db.insert_org("acme").await;
    db.insert_org("globex").await;

    let stdout = ok(
        &db,
        &[
            "role",
            "create",
            "--org",
            "acme",
            "--name",
            "auditors",
            "--permission",
            READ,
        ],
    )
    .await;
    assert!(
        stdout.contains("with permissions: organization.audit.read."),
        "{stdout}"
    );
    let stdout = ok(
        &db,
        &["role", "create", "--org", "acme", "--name", "viewers"],
    )
    .await;
    assert!(stdout.contains("with no permissions."), "{stdout}");
    // Names are per organization.
    ok(
        &db,
        &["role", "create", "--org", "globex", "--name", "auditors"],
    )
    .await;

    let permissions: Vec<(String, Vec<String>, bool)> = db
        .client()
        .await
        .query(
            "SELECT r.name, r.permissions, r.builtin FROM roles r JOIN organizations o ON o.id = r.organization_id
             WHERE o.slug = 'acme' ORDER BY r.name",
            &[],
        )
        .await
        .expect("select")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        permissions,
        vec![
            ("admin".into(), vec![READ.to_owned()], true),
            ("auditors".into(), vec![READ.to_owned()], false),
            ("viewers".into(), vec![], false),
        ]
    );

    let stderr = fails(
        &db,
        &[
            "role",
            "create",
            "--org",
            "acme",
            "--name",
            "writers",
            "--permission",
            "organization.audit.write",
        ],
    )
    .await;
    assert_eq!(
        stderr,
        "compartment-auditd: unknown permission \"organization.audit.write\": known permissions are organization.audit.read\n"
    );
    for duplicate in ["auditors", "AUDITORS", "admin"] {
        let stderr = fails(
            &db,
            &["role", "create", "--org", "acme", "--name", duplicate],
        )
        .await;
        assert_eq!(
            stderr,
            format!("compartment-auditd: organization \"acme\" already has a role named {duplicate:?}\n")
        );
    }
    let stderr = fails(&db, &["role", "create", "--org", "nope", "--name", "x"]).await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"nope\" does not exist\n"
    );
    let stderr = fails(
        &db,
        &["role", "create", "--org", "acme", "--name", " padded "],
    )
    .await;
    assert!(stderr.contains("invalid role name"), "{stderr}");
    assert_eq!(count(&db, "SELECT count(*) FROM roles").await, 5);
}

/// Every row of every table in the schema, as text (bytea as hex).
async fn whole_database_as_text(db: &TestDb) -> String {
    let client = db.client().await;
    let tables: Vec<String> = client
        .query(
            "SELECT quote_ident(table_name) FROM information_schema.tables
             WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
            &[],
        )
        .await
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "api_tokens"), "{tables:?}");
    let mut text = String::new();
    for table in tables {
        let dump: Option<String> = client
            .query_one(
                &format!("SELECT string_agg(t::text, '\n') FROM {table} t"),
                &[],
            )
            .await
            .expect("dump")
            .get(0);
        text.push_str(&dump.unwrap_or_default());
        text.push('\n');
    }
    text
}

#[tokio::test]
async fn token_create_prints_the_token_once_and_stores_only_its_hash() {
    let db = TestDb::new().await;
    db.insert_org("acme").await;
    ok(
        &db,
        &[
            "user",
            "add",
            "--org",
            "acme",
            "--email",
            "ops@example.com",
            "--role",
            "admin",
        ],
    )
    .await;

    let (status, stdout, stderr) = db
        .cli(&[
            "token",
            "create",
            "--org",
            "acme",
            "--email",
            "OPS@example.com",
            "--name",
            "ci",
        ])
        .await;
    assert!(status.success(), "{stderr}");
    let token = stdout.strip_suffix('\n').expect("one line");
    assert!(!token.contains('\n'));
    assert!(token.starts_with("cat_"), "{token}");
    assert_eq!(token.len(), 4 + 43);
    assert!(token[4..]
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert!(
        !stderr.contains(token),
        "the token is printed on stdout only"
    );

    let row = db
        .client()
        .await
        .query_one(
            "SELECT id, token_sha256, name, expires_at IS NULL FROM api_tokens",
            &[],
        )
        .await
        .expect("one token row");
    let id: Uuid = row.get(0);
    assert!(stderr.contains(&id.to_string()), "{stderr}");
    assert_eq!(row.get::<_, Vec<u8>>(1), admin::hash_token(token).to_vec());
    assert_eq!(row.get::<_, Option<String>>(2).as_deref(), Some("ci"));
    assert!(row.get::<_, bool>(3), "no expiry by default");

    let everything = whole_database_as_text(&db).await;
    assert!(
        everything.contains(&hex::encode(admin::hash_token(token))),
        "the dump sees bytea"
    );
    for needle in [
        token.to_owned(),
        token[4..].to_owned(),
        hex::encode(token.as_bytes()),
    ] {
        assert!(
            !everything.contains(&needle),
            "{needle} found in the database"
        );
    }
}

#[tokio::test]
async fn token_create_with_expiry_and_its_errors() {
    let db = TestDb::new().await;
    db.insert_org("acme").await;
    ok(
        &db,
        &["user", "add", "--org", "acme", "--email", "ops@example.com"],
    )
    .await;

    ok(
        &db,
        &[
            "token",
            "create",
            "--org",
            "acme",
            "--email",
            "ops@example.com",
            "--expires-in",
            "30d",
        ],
    )
    .await;
    // Both ends come from the same transaction's now().
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM api_tokens WHERE expires_at - created_at = interval '30 days'"
        )
        .await,
        1
    );

    let stderr = fails(
        &db,
        &[
            "token",
            "create",
            "--org",
            "acme",
            "--email",
            "who@example.com",
        ],
    )
    .await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"acme\" has no user with e-mail \"who@example.com\"\n"
    );
    let stderr = fails(
        &db,
        &[
            "token",
            "create",
            "--org",
            "nope",
            "--email",
            "ops@example.com",
        ],
    )
    .await;
    assert_eq!(
        stderr,
        "compartment-auditd: organization \"nope\" does not exist\n"
    );
    for bad in ["30", "0d", "1.5d", "soon"] {
        let stderr = fails(
            &db,
            &[
                "token",
                "create",
                "--org",
                "acme",
                "--email",
                "ops@example.com",
                "--expires-in",
                bad,
            ],
        )
        .await;
        assert!(stderr.contains("invalid duration"), "{bad}: {stderr}");
    }
    assert_eq!(count(&db, "SELECT count(*) FROM api_tokens").await, 1);
}

#[tokio::test]
async fn token_revoke_revokes_once_and_reports_unknown_ids() {
    let db = TestDb::new().await;
    db.insert_org("acme").await;
    ok(
        &db,
        &["user", "add", "--org", "acme", "--email", "ops@example.com"],
    )
    .await;
    let (_, token, _) = db
        .cli(&[
            "token",
            "create",
            "--org",
            "acme",
            "--email",
            "ops@example.com",
        ])
        .await;
    let token = token.trim_end();
    let info = admin::token_lookup(db.pool(), token)
        .await
        .expect("lookup")
        .expect("live");

    let stdout = ok(&db, &["token", "revoke", "--id", &info.id.to_string()]).await;
    assert!(
        stdout.starts_with(&format!("Revoked API token {}", info.id)),
        "{stdout}"
    );
    let stdout = ok(&db, &["token", "revoke", "--id", &info.id.to_string()]).await;
    assert!(stdout.contains("was already revoked"), "{stdout}");
    assert_eq!(
        admin::token_lookup(db.pool(), token).await.expect("lookup"),
        None
    );

    let unknown = Uuid::new_v4();
    let stderr = fails(&db, &["token", "revoke", "--id", &unknown.to_string()]).await;
    assert_eq!(
        stderr,
        format!("compartment-auditd: no API token has id {unknown}\n")
    );
    let stderr = fails(&db, &["token", "revoke", "--id", "42"]).await;
    assert!(stderr.contains("invalid token id \"42\""), "{stderr}");
}

/// An organization with a user (and its id) per case of the permission check.
struct Fixture {
    admin: Uuid,
    auditor: Uuid,
    viewer: Uuid,
    nobody: Uuid,
    other_org_admin: Uuid,
}

async fn fixture(db: &TestDb) -> Fixture {
    let pool = db.pool();
    for slug in ["acme", "globex"] {
        admin::create_organization(pool, &slug.parse::<OrgSlug>().expect("slug"), None)
            .await
            .expect("org");
    }
    let auditors: RoleName = "auditors".parse().expect("name");
    let viewers: RoleName = "viewers".parse().expect("name");
    admin::create_role(pool, "acme", &auditors, &[READ])
        .await
        .expect("role");
    admin::create_role::<&str>(pool, "acme", &viewers, &[])
        .await
        .expect("role");
    let add = |org: &'static str, email: &'static str, role: Option<&'static str>| async move {
        let email: Email = email.parse().expect("email");
        let roles: Vec<&str> = role.into_iter().collect();
        admin::add_user(pool, org, &email, &roles)
            .await
            .expect("user")
            .id
    };
    Fixture {
        admin: add("acme", "admin@example.com", Some("admin")).await,
        auditor: add("acme", "auditor@example.com", Some("auditors")).await,
        viewer: add("acme", "viewer@example.com", Some("viewers")).await,
        nobody: add("acme", "nobody@example.com", None).await,
        other_org_admin: add("globex", "admin@example.com", Some("admin")).await,
    }
}

#[tokio::test]
async fn permission_check_follows_role_assignments_within_the_organization() {
    let db = TestDb::new().await;
    let users = fixture(&db).await;
    let pool = db.pool();
    let check = |user: Uuid, org: &'static str| async move {
        admin::user_has_permission(pool, user, org, READ)
            .await
            .expect("query")
    };
    assert!(check(users.admin, "acme").await, "built-in admin role");
    assert!(
        check(users.auditor, "acme").await,
        "custom role with the permission"
    );
    assert!(!check(users.viewer, "acme").await, "custom role without it");
    assert!(!check(users.nobody, "acme").await, "no role");
    assert!(
        !check(users.other_org_admin, "acme").await,
        "admin of another organization"
    );
    assert!(check(users.other_org_admin, "globex").await);
    assert!(!check(users.admin, "globex").await);
    assert!(!check(users.admin, "no-such-org").await);
    assert!(!check(Uuid::new_v4(), "acme").await);
    assert!(
        !admin::user_has_permission(pool, users.admin, "acme", "organization.audit.write")
            .await
            .expect("query")
    );
}

#[tokio::test]
async fn token_lookup_finds_live_tokens_only() {
    let db = TestDb::new().await;
    let users = fixture(&db).await;
    let pool = db.pool();
    let live = admin::create_token(pool, "acme", "AUDITOR@example.com", Some("ci"), None)
        .await
        .expect("token");
    let expiring = admin::create_token(
        pool,
        "acme",
        "auditor@example.com",
        None,
        Some(std::time::Duration::from_secs(3600)),
    )
    .await
    .expect("token");
    let revoked = admin::create_token(pool, "acme", "auditor@example.com", None, None)
        .await
        .expect("token");

    let info = admin::token_lookup(pool, live.token.expose())
        .await
        .expect("lookup")
        .expect("live token found");
    assert_eq!(info.id, live.id);
    assert_eq!(info.user_id, users.auditor);
    assert_eq!(info.user_email, "auditor@example.com");
    assert_eq!(info.organization_slug, "acme");
    assert_eq!(info.token_sha256, admin::hash_token(live.token.expose()));
    assert_eq!(info.expires_at, None);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT count(*) FROM api_tokens WHERE id = '{}' AND last_used_at IS NOT NULL",
                live.id
            )
        )
        .await,
        1,
        "use is recorded"
    );

    // Not yet expired: found. Then its expiry is moved into the past (the database's
    // clock decides, so the clock is not waited for).
    assert!(admin::token_lookup(pool, expiring.token.expose())
        .await
        .expect("lookup")
        .is_some());
    db.client()
        .await
        .execute(
            "UPDATE api_tokens SET expires_at = now() - interval '1 second' WHERE id = $1",
            &[&expiring.id],
        )
        .await
        .expect("expire");
    assert_eq!(
        admin::token_lookup(pool, expiring.token.expose())
            .await
            .expect("lookup"),
        None
    );

    admin::revoke_token(pool, revoked.id).await.expect("revoke");
    assert_eq!(
        admin::token_lookup(pool, revoked.token.expose())
            .await
            .expect("lookup"),
        None
    );

    let unknown = format!("cat_{}", "A".repeat(43));
    assert_eq!(
        admin::token_lookup(pool, &unknown).await.expect("lookup"),
        None
    );
    assert_eq!(admin::token_lookup(pool, "").await.expect("lookup"), None);
    // The hash itself is not a credential.
    let hash_hex = hex::encode(admin::hash_token(live.token.expose()));
    assert_eq!(
        admin::token_lookup(pool, &hash_hex).await.expect("lookup"),
        None
    );
    assert!(admin::token_lookup(pool, live.token.expose())
        .await
        .expect("lookup")
        .is_some());
}

#[tokio::test]
async fn library_retention_change_reports_from_and_to() {
    let db = TestDb::new().await;
    db.insert_org("acme").await;
    let change = admin::set_audit_retention(db.pool(), "acme", AuditRetention::Days(7))
        .await
        .expect("change");
    assert_eq!(change.from, AuditRetention::Inherit);
    assert_eq!(change.to, AuditRetention::Days(7));
    assert!(change.event_id.is_some());
    assert_eq!(change.organization.audit_retention, AuditRetention::Days(7));
    let org = admin::organization(db.pool(), "acme").await.expect("org");
    assert_eq!(org.audit_retention.effective_days(90), Some(7));
    let again = admin::set_audit_retention(db.pool(), "acme", AuditRetention::Days(7))
        .await
        .expect("no-op");
    assert_eq!(again.event_id, None);
    assert!(matches!(
        admin::set_audit_retention(db.pool(), "nope", AuditRetention::Inherit).await,
        Err(admin::AdminError::UnknownOrganization { .. })
    ));
}
