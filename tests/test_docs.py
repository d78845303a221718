"""The documentation tells the truth about the configuration: every setting a process reads
is documented in docs/API.md, and every tool the registry can build has its docs/TOOLS.md
section."""

import re
from pathlib import Path

from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_setting_is_documented_in_the_api_contract():
    docs = (ROOT / "docs" / "API.md").read_text()
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", docs))
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in documented]
    assert not missing, f"settings missing from docs/API.md: {missing}"


def test_every_builtin_tool_has_its_section_in_tools_md(settings, pool):
    from tools.registry import build_registry

    sections = set(re.findall(r"^## (\w+)$", (ROOT / "docs" / "TOOLS.md").read_text(), re.M))
    names = {spec.name for spec in build_registry(settings, pool).specs()}
    assert names == {"send_email", "search_emails", "query_database", "web_search", "fetch_page"}
    assert names <= sections
