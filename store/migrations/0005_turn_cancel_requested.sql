-- Set when a cancel is requested, before the workflow has ended the turn: from then on,
-- decisions on its approvals are refused (`approval_cancelled`).
ALTER TABLE turns ADD COLUMN cancel_requested_at timestamptz;
