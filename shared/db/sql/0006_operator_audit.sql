-- The operator audit log (shared/operator_audit.py): who changed what, when, from where, with the
-- state before and after. Written by admin actions only (the admin API and the operator dashboard),
-- never on the request path. GET /admin/audit-log pages it newest first by id.

CREATE TABLE operator_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,                -- "admin token", or the dashboard operator's email
    action      text NOT NULL,                -- e.g. catalog.update, account.create, credits.topup, key.revoke
    target      text NOT NULL DEFAULT '',     -- what it acted on: an account, key, batch id, "catalog"
    client      text NOT NULL DEFAULT '',     -- the client's address as the gateway saw it (trusted proxies)
    before      jsonb,
    after       jsonb
);
CREATE INDEX operator_audit_by_action ON operator_audit (action, id DESC);
CREATE INDEX operator_audit_by_target ON operator_audit (target, id DESC);
