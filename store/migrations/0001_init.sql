-- Users, keys, conversations, messages, turns, the event log and idempotency records.

CREATE TABLE users (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    disabled_at timestamptz
);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text,
    prefix       text NOT NULL,
    secret_hash  bytea NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user ON api_keys (user_id, created_at);

CREATE TABLE conversations (
    id             text PRIMARY KEY,
    user_id        text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    title          text,
    system_prompt  text,
    model          text,
    tools          jsonb,
    metadata       jsonb NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    active_turn_id text
);
CREATE INDEX conversations_user_recent ON conversations (user_id, created_at DESC, id DESC);

CREATE TABLE turns (
    id                text PRIMARY KEY,
    conversation_id   text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id           text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_message_id   text NOT NULL,
    status            text NOT NULL CHECK (status IN
                        ('queued', 'running', 'awaiting_approval', 'completed', 'failed', 'cancelled')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    error             jsonb,
    output_message_id text,
    last_seq          integer NOT NULL DEFAULT 0,
    -- The model attempt allowed to append tokens: a stale attempt (a zombie after a
    -- heartbeat timeout) is refused, so tokens of two attempts never interleave.
    stream_message_id text,
    stream_attempt    integer NOT NULL DEFAULT 0
);
CREATE INDEX turns_conversation ON turns (conversation_id, created_at DESC, id DESC);
-- One active turn per conversation, enforced by the database.
CREATE UNIQUE INDEX turns_one_active ON turns (conversation_id)
    WHERE status IN ('queued', 'running', 'awaiting_approval');

CREATE TABLE messages (
    id              text PRIMARY KEY,
    position        bigint GENERATED ALWAYS AS IDENTITY,
    conversation_id text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    turn_id         text,
    role            text NOT NULL CHECK (role IN ('user', 'assistant', 'tool')),
    content         text,
    tool_calls      jsonb,
    tool_call_id    text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_conversation ON messages (conversation_id, position);

-- Usage per model call; a retried call overwrites its row, so sums never double count.
CREATE TABLE model_calls (
    turn_id           text NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
    step              integer NOT NULL,
    model             text NOT NULL,
    prompt_tokens     integer NOT NULL,
    completion_tokens integer NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (turn_id, step)
);

CREATE TABLE events (
    turn_id    text NOT NULL REFERENCES turns (id) ON DELETE CASCADE,
    seq        integer NOT NULL,
    type       text NOT NULL,
    payload    jsonb NOT NULL,
    -- Set for events that a retried activity may append twice; unique per turn.
    dedupe_key text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (turn_id, seq)
);
CREATE UNIQUE INDEX events_dedupe ON events (turn_id, dedupe_key) WHERE dedupe_key IS NOT NULL;

CREATE TABLE idempotency_keys (
    user_id          text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key              text NOT NULL,
    method           text NOT NULL,
    path             text NOT NULL,
    request_hash     text NOT NULL,
    -- NULL while the first request is in flight.
    response_status  integer,
    response_body    bytea,
    response_headers jsonb,
    turn_id          text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
