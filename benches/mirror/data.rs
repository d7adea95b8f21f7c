//! Realistic audit events, generated inside PostgreSQL.
//!
//! One set-returning SQL function, `bench_rows(lo, hi, backdate)`, describes event
//! number `g` for every `g` in `lo..=hi`: a mix of catalog event types with the
//! metadata Compartment's API writes, about a quarter of them carrying keys or values
//! the sanitizer must drop or redact. The bulk load and the live writers use the same
//! function, so both scenarios mirror the same kind of line (about 450 bytes once
//! sanitized).

use anyhow::Context as _;
use tokio_postgres::Client;

/// Organizations the events are spread over.
pub const ORGANIZATIONS: usize = 20;

/// Rows per transaction of the bulk load: large enough to load quickly, small enough
/// that the catch-up reads across many transactions (`tx` changes every chunk).
const LOAD_CHUNK: u64 = 50_000;

/// Creates the organizations and the generator function in a migrated database.
pub async fn prepare(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(&format!(
            "INSERT INTO organizations (slug, name) \
             SELECT 'bench-org-' || lpad(n::text, 2, '0'), 'Bench organization ' || n \
             FROM generate_series(1, {ORGANIZATIONS}) n;\n{GENERATOR}"
        ))
        .await
        .context("creating the benchmark organizations and the event generator")
}

/// Inserts events `1..=count` (back-dated, as an existing history would be), one
/// transaction per chunk, then vacuums so that every reader finds the same,
/// all-visible table (the first reader would otherwise pay for setting hint bits).
pub async fn load(client: &Client, count: u64) -> anyhow::Result<()> {
    let mut lo = 1;
    while lo <= count {
        let hi = (lo + LOAD_CHUNK - 1).min(count);
        client
            .execute(
                &format!("INSERT INTO audit_events ({COLUMNS}) SELECT {COLUMNS} FROM bench_rows($1, $2, true)"),
                &[&i64::try_from(lo)?, &i64::try_from(hi)?],
            )
            .await
            .context("loading events")?;
        lo = hi + 1;
    }
    client
        .batch_execute("VACUUM (ANALYZE) audit_events")
        .await
        .context("vacuuming audit_events")?;
    Ok(())
}

/// One live event, as a single-row `INSERT` in its own transaction, returning its id.
pub const INSERT_ONE: &str =
    "INSERT INTO audit_events (organization_id, event_type, actor_type, actor_id, actor_email, \
     target_type, target_id, project_id, status, metadata) \
     SELECT organization_id, event_type, actor_type, actor_id, actor_email, \
     target_type, target_id, project_id, status, metadata FROM bench_rows($1, $1, false) \
     RETURNING id";

/// Columns the generator fills (the rest take their defaults: `id`, `tx`).
const COLUMNS: &str =
    "organization_id, occurred_at, event_type, actor_type, actor_id, actor_email, \
     target_type, target_id, project_id, status, metadata";

/// The generator. Plain SQL so that the planner inlines it into the `INSERT`.
const GENERATOR: &str = r#"
CREATE FUNCTION bench_rows(lo bigint, hi bigint, backdate boolean)
RETURNS TABLE (organization_id uuid, occurred_at timestamptz, event_type text, actor_type text,
               actor_id text, actor_email text, target_type text, target_id text,
               project_id text, status text, metadata jsonb)
LANGUAGE sql STABLE AS $fn$
SELECT
    orgs.ids[1 + (g % cardinality(orgs.ids))],
    CASE WHEN backdate THEN now() - (hi - g) * interval '2 seconds' ELSE now() END,
    (ARRAY['organization.git_source.sync_succeeded', 'organization.git_source.push_received',
           'organization.git_source.auto_deploy_queued', 'organization.user.invited',
           'organization.role.updated', 'organization.assignment.created',
           'organization.git_source.settings_changed', 'organization.sso.oidc_provider.updated',
           'organization.user.password_reset_issued', 'organization.group.membership_changed',
           'organization.settings.updated', 'organization.audit.export_created'])[1 + g % 12],
    CASE WHEN g % 12 IN (0, 1) THEN 'system' WHEN g % 7 = 0 THEN 'api_token' ELSE 'user' END,
    CASE WHEN g % 12 IN (0, 1) THEN 'git-sync' WHEN g % 7 = 0 THEN 'tok_' || substr(md5((g % 40)::text), 1, 16)
         ELSE 'usr_01HZX3' || upper(substr(md5((g % 200)::text), 1, 16)) END,
    CASE WHEN g % 12 IN (0, 1) THEN NULL ELSE 'user' || (g % 200) || '@example.com' END,
    (ARRAY['git_source', 'git_source', 'git_source', 'user', 'role', 'assignment', 'git_source',
           'oidc_provider', 'user', 'group', 'organization', 'audit_export'])[1 + g % 12],
    (ARRAY['gs_', 'gs_', 'gs_', 'usr_', 'role_', 'asg_', 'gs_', 'oidc_', 'usr_', 'grp_', 'org_', 'exp_'])[1 + g % 12]
        || substr(md5(g::text), 1, 12),
    CASE WHEN g % 3 = 0 THEN 'prj_' || substr(md5((g % 60)::text), 1, 10) END,
    CASE WHEN g % 101 = 0 THEN 'denied' WHEN g % 37 = 0 THEN 'failed' ELSE 'succeeded' END,
    CASE g % 12
    WHEN 0 THEN jsonb_build_object('git_source_id', 'gs_' || (g % 97), 'repository', 'acme/service-' || (g % 50),
        'branch', 'main', 'commit_id', md5(g::text) || substr(md5((g + 1)::text), 1, 8),
        'trigger', 'push', 'duration_ms', 400 + g % 5000)
    WHEN 1 THEN jsonb_build_object('git_source_id', 'gs_' || (g % 97), 'repository', 'acme/service-' || (g % 50),
        'branch', CASE WHEN g % 5 = 0 THEN 'release/2026.' || (g % 12) ELSE 'main' END,
        'commit_id', md5(g::text) || substr(md5((g + 1)::text), 1, 8),
        -- The raw webhook headers must never reach the sink.
        'headers', jsonb_build_object('X-Hub-Signature-256', 'sha256=' || md5(g::text), 'User-Agent', 'GitHub-Hookshot/1'))
    WHEN 2 THEN jsonb_build_object('git_source_id', 'gs_' || (g % 97), 'repository', 'acme/service-' || (g % 50),
        'branch', 'main', 'commit_id', md5(g::text) || substr(md5((g + 1)::text), 1, 8),
        'descriptor_path', 'deploy/compartment.yaml', 'deployment_id', 'dep_' || substr(md5((g + 2)::text), 1, 12))
    WHEN 3 THEN jsonb_build_object('email', 'new' || (g % 1000) || '@example.com',
        'role_ids', jsonb_build_array('role_admin', 'role_dev'), 'invited_via', 'console',
        -- Some clients send the initial password along; it is dropped.
        'password', CASE WHEN g % 4 = 3 THEN 'Winter2026!' END)
    WHEN 4 THEN jsonb_build_object('role_id', 'role_dev', 'role_name', 'Developers',
        'permissions', jsonb_build_array('project.deploy', 'project.read', 'organization.audit.read'),
        'added_permissions', jsonb_build_array('organization.audit.read'), 'removed_permissions', '[]'::jsonb)
    WHEN 5 THEN jsonb_build_object('assignment_id', 'asg_' || substr(md5(g::text), 1, 12), 'role_id', 'role_dev',
        'subject_type', 'user', 'subject_id', 'usr_' || substr(md5((g % 200)::text), 1, 12),
        'scope_type', 'project', 'scope_id', 'prj_' || substr(md5((g % 60)::text), 1, 10))
    WHEN 6 THEN jsonb_build_object('git_source_id', 'gs_' || (g % 97), 'repository', 'acme/service-' || (g % 50),
        'changed_fields', jsonb_build_array('branch', 'webhook_secret'),
        'diff', jsonb_build_array(
            jsonb_build_object('field', 'branch', 'op', 'replace', 'from', 'main', 'to', 'release'),
            jsonb_build_object('field', 'webhook_secret', 'op', 'replace',
                'from', jsonb_build_object('sensitive', true, 'fingerprint', 'sha256:' || md5(g::text)),
                'to', jsonb_build_object('sensitive', true, 'fingerprint', 'sha256:' || md5((g + 1)::text)))))
    WHEN 7 THEN jsonb_build_object('provider_id', 'oidc_' || (g % 20), 'provider_name', 'Okta',
        'issuer', 'https://acme.okta.com', 'client_id', '0oa' || substr(md5((g % 20)::text), 1, 17),
        'scopes', jsonb_build_array('openid', 'email', 'profile'), 'changed_fields', jsonb_build_array('client_secret'),
        -- A client secret is dropped by key, whatever the allowlist says.
        'client_secret', 'cs_' || md5(g::text))
    WHEN 8 THEN jsonb_build_object('user_id', 'usr_' || substr(md5((g % 200)::text), 1, 12),
        'email', 'user' || (g % 200) || '@example.com', 'expires_at', '2026-06-01T12:00:00Z',
        -- Issuance facts only: a reset URL with a token in it is redacted.
        'issued_via', CASE WHEN g % 3 = 0 THEN 'https://app.example.com/reset?token=' || md5(g::text) ELSE 'console' END)
    WHEN 9 THEN jsonb_build_object('group_id', 'grp_' || (g % 30), 'group_name', 'Platform team',
        'added_user_ids', jsonb_build_array('usr_' || substr(md5(g::text), 1, 12)), 'removed_user_ids', '[]'::jsonb)
    WHEN 10 THEN jsonb_build_object('changed_fields', jsonb_build_array('audit_retention'),
        'audit_retention', jsonb_build_object('from', 'inherit', 'to', 365))
    ELSE jsonb_build_object('format', CASE WHEN g % 2 = 0 THEN 'ndjson' ELSE 'csv' END, 'event_count', g % 10000,
        'filters', jsonb_build_object('from', '2026-05-01T00:00:00Z', 'event', 'organization.user.invited'),
        -- An API token pasted into a filter is redacted by shape.
        'token', CASE WHEN g % 5 = 0 THEN 'ghp_' || md5(g::text) || 'abcd' END)
    END
FROM generate_series(lo, hi) AS g,
     (SELECT array_agg(id ORDER BY slug) AS ids FROM organizations WHERE slug LIKE 'bench-org-%') AS orgs
$fn$;
"#;
