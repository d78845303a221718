"""Operators decide which tools need approval (MCP_CONFIG `confirmation` and
`requireConfirmation`), for built-in tools too; turning approval off is never silent."""

import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from core.errors import ConfigurationError
from tools.mcp_config import load_mcp_config
from tools.registry import build_registry


def write_config(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(document))
    return path


def test_built_in_tools_follow_the_operator_and_turning_approval_off_is_logged(settings, tmp_path):
    path = write_config(
        tmp_path, {"mcpServers": {}, "confirmation": {"send_email": False, "fetch_page": True}}
    )
    with capture_logs() as logs:
        registry = build_registry(settings.model_copy(update={"mcp_config": path}), None, tool_servers=True)
    specs = {spec.name: spec for spec in registry.specs()}
    assert specs["send_email"].requires_confirmation is False
    assert specs["fetch_page"].requires_confirmation is True
    assert specs["web_search"].requires_confirmation is False, "tools not named keep their rule"
    warnings = [e for e in logs if e["log_level"] == "warning" and e.get("tool") == "send_email"]
    assert warnings and "without a person's approval" in warnings[0]["event"]


def test_without_tool_servers_the_declared_rules_hold(settings, tmp_path):
    path = write_config(tmp_path, {"mcpServers": {}, "confirmation": {"send_email": False}})
    registry = build_registry(settings.model_copy(update={"mcp_config": path}), None)
    assert {s.name: s.requires_confirmation for s in registry.specs()}["send_email"] is True


@pytest.mark.parametrize(
    ("name", "declared", "expected"),
    [
        ("lab__add", False, False),
        ("lab__add", True, True),
        ("crm__create_deal", False, True),  # a requireConfirmation pattern
        ("lab__drop", True, False),  # the operator's explicit word wins over the declaration
        ("lab__peek", False, True),
    ],
)
def test_remote_rules(tmp_path, name, declared, expected):
    config = load_mcp_config(
        write_config(
            tmp_path,
            {
                "mcpServers": {},
                "requireConfirmation": ["crm__create_*"],
                "confirmation": {"lab__drop": False, "lab__peek": True},
            },
        )
    )
    assert config.needs_approval(name, declared) is expected


@pytest.mark.parametrize("confirmation", [["send_email"], {"send_email": "no"}, {"send_email": 0}])
def test_a_malformed_confirmation_entry_is_a_clear_error(tmp_path, confirmation):
    path = write_config(tmp_path, {"mcpServers": {}, "confirmation": confirmation})
    with pytest.raises(
        ConfigurationError, match="confirmation: must be an object of tool names to true or false"
    ):
        load_mcp_config(path)
