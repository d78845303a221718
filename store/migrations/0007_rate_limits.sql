-- Fixed-window rate-limit counters shared by every API process (RATE_LIMIT_STORAGE=postgres;
-- store/ratelimit_storage.py). UNLOGGED: no WAL for a row written on every request; a crash
-- empties the table, which only forgives the windows then running. Expired rows are deleted
-- by each API process in the background.
CREATE UNLOGGED TABLE rate_limits (
    key        text PRIMARY KEY,
    count      integer NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX rate_limits_expires ON rate_limits (expires_at);

-- A user's active turns (finished_at IS NULL) and those finished today, read at each turn
-- start for MAX_ACTIVE_TURNS_PER_USER and DAILY_TOKEN_BUDGET.
CREATE INDEX turns_user_finished ON turns (user_id, finished_at);
