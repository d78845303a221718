-- Tool call ids are unique within one model reply only (some models reuse `call_0` every
-- step), so an approval is identified by the reply's message id and the call id.
ALTER TABLE approvals ADD COLUMN step_message_id text NOT NULL DEFAULT '';
ALTER TABLE approvals DROP CONSTRAINT approvals_turn_id_tool_call_id_key;
CREATE UNIQUE INDEX approvals_call ON approvals (turn_id, step_message_id, tool_call_id);
