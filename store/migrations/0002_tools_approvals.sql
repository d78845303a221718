-- The tool catalog published by workers, approvals of tool calls, and their audit trail.

CREATE TABLE tool_catalog (
    name                  text PRIMARY KEY,
    description           text NOT NULL,
    input_schema          jsonb NOT NULL,
    requires_confirmation boolean NOT NULL,
    source                text NOT NULL,
    healthy               boolean NOT NULL DEFAULT true,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE approvals (
    id                 text PRIMARY KEY,
    turn_id            text NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
    conversation_id    text NOT NULL,
    user_id            text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tool               text NOT NULL,
    tool_call_id       text NOT NULL,
    -- What the model asked for; `arguments` is what runs (replaced by an edited approval).
    requested_arguments jsonb NOT NULL,
    arguments          jsonb NOT NULL,
    status             text NOT NULL CHECK (status IN
                         ('pending', 'approved', 'rejected', 'expired', 'cancelled')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    decided_at         timestamptz,
    decided_by         text,
    reason             text,
    -- When the workflow was told of the decision; NULL → the worker's reconciler tells it.
    signalled_at       timestamptz,
    UNIQUE (turn_id, tool_call_id)
);
CREATE INDEX approvals_user_recent ON approvals (user_id, created_at DESC, id DESC);
CREATE INDEX approvals_unsignalled ON approvals (decided_at)
    WHERE status IN ('approved', 'rejected') AND signalled_at IS NULL;

-- Every decision attempt, applied or refused: who, when, what.
CREATE TABLE approval_audit (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    approval_id text NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
    actor       text,
    decision    text NOT NULL,
    arguments   jsonb,
    reason      text,
    outcome     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX approval_audit_approval ON approval_audit (approval_id, id);
