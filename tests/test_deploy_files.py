"""The production compose file is valid (Debian's docker-compose validates it; no engine runs here)."""

import shutil
import subprocess

from tests.conftest import ROOT


def test_compose_file_is_valid():
    assert shutil.which("docker-compose"), "make test installs docker-compose (Debian package)"
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_process_of_the_service():
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--services"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    services = set(result.stdout.split())
    assert {"postgres", "temporal", "temporal-ui", "migrate", "api", "worker", "mailpit"} <= services
