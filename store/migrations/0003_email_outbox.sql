-- The send_email outbox: one row per idempotency key (turn + tool call), so a retried
-- activity never sends a message twice. `data_sent` is committed before the DATA command;
-- a row left in it (a crash, a lost reply) means the server may hold the message, so no
-- later attempt sends it again: it becomes `uncertain` instead.
CREATE TABLE email_outbox (
    idempotency_key text PRIMARY KEY,
    status          text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'data_sent', 'accepted', 'uncertain', 'failed')),
    message_id      text NOT NULL,
    -- Envelope recipients (to, cc and bcc), as given to RCPT TO.
    recipients      text[] NOT NULL,
    -- {message_id, accepted, rejected}, the tool's result, once the server accepted the message.
    result          jsonb,
    attempts        integer NOT NULL DEFAULT 0,
    -- The last failure, as reported to the caller (never a password or a body).
    error           text,
    -- No foreign keys: the record outlives a deleted conversation, and the tool server sends
    -- mail outside any turn.
    turn_id         text,
    tool_call_id    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    data_sent_at    timestamptz,
    finished_at     timestamptz
);
CREATE INDEX email_outbox_turn ON email_outbox (turn_id) WHERE turn_id IS NOT NULL;
-- Sends that need a person to check the recipient's mailbox.
CREATE INDEX email_outbox_uncertain ON email_outbox (updated_at) WHERE status = 'uncertain';
