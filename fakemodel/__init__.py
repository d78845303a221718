"""Built-in OpenAI-compatible fake model: offline demo answers and scriptable test replies."""

from fakemodel.demo import demo_answer
from fakemodel.script import (
    BreakStep,
    ErrorStep,
    RecordedRequest,
    ReplyStep,
    ScriptBook,
    Step,
    ToolCallSpec,
    ToolCallsStep,
)
from fakemodel.server import FakeModelServer, create_app, serve

__all__ = [
    "BreakStep",
    "ErrorStep",
    "FakeModelServer",
    "RecordedRequest",
    "ReplyStep",
    "ScriptBook",
    "Step",
    "ToolCallSpec",
    "ToolCallsStep",
    "create_app",
    "demo_answer",
    "serve",
]
