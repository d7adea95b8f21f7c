-- Reference schema, part 1: organizations and who may read their audit log.
--
-- Compartment's API owns the real schema; this reference version lets
-- compartment-auditd run, be tested and be demonstrated on its own. The column
-- names the daemon relies on are listed in SPEC §3 and must not change.

-- xid8, pg_current_xact_id() and the built-in gen_random_uuid() arrived in
-- PostgreSQL 13; fail with a clear message instead of a missing-function error.
DO $$
BEGIN
    IF current_setting('server_version_num')::integer < 130000 THEN
        RAISE EXCEPTION 'compartment-auditd needs PostgreSQL 13 or newer (found %)',
            current_setting('server_version');
    END IF;
END
$$;

CREATE TABLE organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- A DNS-label-like handle (`acme-dev`): used in URLs and on the command line,
    -- where a leading hyphen would read as an option.
    slug text NOT NULL UNIQUE
        CONSTRAINT organizations_slug_format
        CHECK (slug ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    name text NOT NULL,
    -- How long this organization's audit events are kept: `inherit` the install
    -- default (COMPARTMENT_AUDIT_RETENTION_DAYS), a number of `days`, or
    -- `indefinite` (retention cleanup skips the organization).
    audit_retention_mode text NOT NULL DEFAULT 'inherit'
        CONSTRAINT organizations_audit_retention_mode_check
        CHECK (audit_retention_mode IN ('inherit', 'days', 'indefinite')),
    audit_retention_days integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Days are given exactly when the mode says so, and are at least 1: a zero or
    -- negative value would make cleanup delete everything. (Spelled out with IS NOT
    -- NULL because a CHECK that evaluates to NULL passes.)
    CONSTRAINT organizations_audit_retention_days_check CHECK (
        (audit_retention_mode = 'days' AND audit_retention_days IS NOT NULL AND audit_retention_days >= 1)
        OR (audit_retention_mode <> 'days' AND audit_retention_days IS NULL)
    )
);

COMMENT ON TABLE organizations IS
    'Tenants. Every audit event belongs to one; each carries its own audit retention setting.';
COMMENT ON COLUMN organizations.audit_retention_mode IS
    'inherit (install default), days (audit_retention_days) or indefinite (never cleaned up).';
COMMENT ON COLUMN organizations.audit_retention_days IS
    'Retention in days (>= 1) when audit_retention_mode = days, otherwise NULL.';

CREATE TABLE users (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email text NOT NULL CONSTRAINT users_email_not_blank CHECK (btrim(email) <> ''),
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Target of the composite foreign keys below: a role assignment or a token can
    -- only join a user and a role of the same organization.
    CONSTRAINT users_organization_id_id_key UNIQUE (organization_id, id)
);

-- E-mail addresses are case-insensitive in practice; `Ops@x` and `ops@x` are one user.
CREATE UNIQUE INDEX users_organization_email_key ON users (organization_id, lower(email));

COMMENT ON TABLE users IS
    'Members of an organization (a stand-in for Compartment''s user management).';

CREATE TABLE roles (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name text NOT NULL CONSTRAINT roles_name_not_blank CHECK (btrim(name) <> ''),
    -- The `admin` role every organization gets; custom roles are not built in.
    builtin boolean NOT NULL DEFAULT false,
    -- Permission names such as `organization.audit.read`. Custom roles start empty:
    -- nothing is granted implicitly.
    permissions text[] NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT roles_organization_id_id_key UNIQUE (organization_id, id)
);

CREATE UNIQUE INDEX roles_organization_name_key ON roles (organization_id, lower(name));

COMMENT ON TABLE roles IS
    'Named permission sets per organization; the built-in admin role holds organization.audit.read.';

-- Every organization gets its built-in admin role, however it is inserted: the
-- CLI, Compartment's API or a plain INSERT in a test.
CREATE FUNCTION organizations_create_admin_role() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO roles (organization_id, name, builtin, permissions)
    VALUES (NEW.id, 'admin', true, ARRAY['organization.audit.read']);
    RETURN NULL;
END
$$;

CREATE TRIGGER organizations_create_admin_role
    AFTER INSERT ON organizations
    FOR EACH ROW EXECUTE FUNCTION organizations_create_admin_role();

CREATE TABLE role_assignments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    role_id uuid NOT NULL,
    user_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Both keys include the organization, so a user can never hold another
    -- organization's role.
    FOREIGN KEY (organization_id, role_id) REFERENCES roles (organization_id, id) ON DELETE CASCADE,
    FOREIGN KEY (organization_id, user_id) REFERENCES users (organization_id, id) ON DELETE CASCADE,
    CONSTRAINT role_assignments_role_id_user_id_key UNIQUE (role_id, user_id)
);

-- The permission check starts from the user.
CREATE INDEX role_assignments_user_id_idx ON role_assignments (user_id);

COMMENT ON TABLE role_assignments IS 'Which user holds which role, within one organization.';

CREATE TABLE api_tokens (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    user_id uuid NOT NULL,
    -- Only the SHA-256 of the token is stored; the token itself is shown once, at
    -- creation, and cannot be recovered from the database.
    token_sha256 bytea NOT NULL UNIQUE
        CONSTRAINT api_tokens_token_sha256_length CHECK (octet_length(token_sha256) = 32),
    name text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    -- Updated by the API at most about once a minute per token.
    last_used_at timestamptz,
    FOREIGN KEY (organization_id, user_id) REFERENCES users (organization_id, id) ON DELETE CASCADE
);

COMMENT ON TABLE api_tokens IS
    'Bearer tokens for the /v1 API, stored as SHA-256 only; a token acts as its user.';
COMMENT ON COLUMN api_tokens.token_sha256 IS 'SHA-256 of the full token string; never the token.';
