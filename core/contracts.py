"""Payloads that cross Temporal: one input object per workflow and activity.

They hold ids and small decisions only, never transcripts (history stays small however long
a conversation grows). Fields may be added with defaults; never removed or renamed, since
running workflows have them in their histories.
"""

from dataclasses import dataclass, field

WORKFLOW_NAME = "TurnWorkflow"


@dataclass
class TurnInput:
    turn_id: str
    conversation_id: str
    user_id: str
    max_steps: int = 10
    # Read from settings by the API when it starts the turn: a workflow reads no environment.
    approval_timeout_seconds: float = 86400.0


@dataclass
class TurnOutcome:
    status: str
    error_code: str | None = None


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass
class ModelStepInput:
    turn_id: str
    conversation_id: str
    step: int


@dataclass
class ModelStepResult:
    message_id: str
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class TurnStatusInput:
    turn_id: str
    status: str
    # Deterministic per transition, so a retried activity does not append a second event.
    dedupe_key: str


@dataclass
class FinishTurnInput:
    turn_id: str
    status: str
    message_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None


@dataclass
class ToolStepInput:
    turn_id: str
    conversation_id: str
    user_id: str
    message_id: str
    approval_timeout_seconds: float = 86400.0


@dataclass
class PlannedCall:
    tool_call_id: str
    tool: str
    # "done" (answered already: unknown tool, invalid arguments), "run", or "approve".
    action: str
    approval_id: str | None = None
    policy: str = "default"


@dataclass
class ToolPlan:
    calls: list[PlannedCall] = field(default_factory=list)


@dataclass
class RunToolInput:
    turn_id: str
    conversation_id: str
    user_id: str
    message_id: str
    tool_call_id: str
    tool: str
    approval_id: str | None = None


@dataclass
class ToolRunResult:
    status: str


@dataclass
class RecordToolResultInput:
    """A result the workflow decided: a rejection, or a failure after every retry."""

    turn_id: str
    conversation_id: str
    tool_call_id: str
    tool: str
    status: str
    approval_id: str | None = None
    message_id: str = ""
    error_code: str | None = None
    error_message: str | None = None


@dataclass
class ExpireApprovalInput:
    approval_id: str


@dataclass
class ApprovalState:
    status: str


@dataclass
class ApprovalDecided:
    """The signal the API sends when a person decides; details stay in PostgreSQL."""

    approval_id: str
    decision: str


# Activity and signal names: a stable API, recorded in every workflow history.
STREAM_MODEL_REPLY = "stream_model_reply"
SET_TURN_STATUS = "set_turn_status"
FINISH_TURN = "finish_turn"
PREPARE_TOOL_CALLS = "prepare_tool_calls"
RUN_TOOL = "run_tool"
RECORD_TOOL_RESULT = "record_tool_result"
EXPIRE_APPROVAL = "expire_approval"
APPROVAL_DECIDED_SIGNAL = "approval_decided"
CANCEL_REQUESTED_SIGNAL = "cancel_requested"
