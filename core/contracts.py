"""Payloads that cross Temporal: one input object per workflow and activity.

They hold ids and small decisions only, never transcripts (history stays small however long
a conversation grows). Fields may be added with defaults; never removed or renamed, since
running workflows have them in their histories.
"""

from dataclasses import dataclass, field

TASK_QUEUE = "assistant"
WORKFLOW_NAME = "TurnWorkflow"


@dataclass
class TurnInput:
    turn_id: str
    conversation_id: str
    user_id: str
    max_steps: int = 10


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


# Activity names: a stable API, recorded in every workflow history.
STREAM_MODEL_REPLY = "stream_model_reply"
SET_TURN_STATUS = "set_turn_status"
FINISH_TURN = "finish_turn"
