-- Why a tool cannot be used now (its server is down, its definition changed since it was
-- pinned), for operators and the API's `problem` field; NULL when it can.
ALTER TABLE tool_catalog ADD COLUMN problem text;

-- Tool definitions from tool servers, pinned on first sight: a server that later changes a
-- pinned tool's name, description or schema gets that tool disabled until an operator
-- trusts the new definition (`assistant tools trust SERVER`).
CREATE TABLE tool_pins (
    name            text PRIMARY KEY,  -- <server>__<tool>
    server          text NOT NULL,
    pinned_hash     text NOT NULL,
    pinned_at       timestamptz NOT NULL DEFAULT now(),
    seen_hash       text NOT NULL,
    seen_definition jsonb NOT NULL,
    seen_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tool_pins_server ON tool_pins (server);
