"""The deployment files: the production compose file is valid (Debian's docker-compose validates it;
no engine runs here), and the image holds everything the package installs."""

import os
import shutil
import subprocess
import tomllib

import yaml

from tests.conftest import ROOT


def compose(*args: str, password: str | None = "a-real-secret") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    return subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_compose_file_is_valid():
    assert shutil.which("docker-compose"), "make test installs docker-compose (Debian package)"
    result = compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_run_without_a_database_password():
    result = compose("config", "-q", password=None)
    assert result.returncode != 0 and "POSTGRES_PASSWORD" in result.stderr


def test_compose_runs_every_process_of_the_service():
    result = compose("config", "--services")
    services = set(result.stdout.split())
    assert {"postgres", "temporal", "temporal-ui", "migrate", "api", "worker", "mailpit"} <= services


def test_the_image_copies_every_module_the_package_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            copied.update(line.split()[1:-1])
    modules = {f"{name}.py" for name in project["py-modules"]}
    packages = {pattern.rstrip("*") for pattern in project["packages"]["find"]["include"]}
    assert modules | packages <= copied, f"not copied into the image: {(modules | packages) - copied}"


def test_compose_puts_two_api_replicas_behind_one_port_and_runs_two_workers():
    result = compose("config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert services["api"]["deploy"]["replicas"] == 2 and services["worker"]["deploy"]["replicas"] == 2
    assert "ports" not in services["api"], "replicas cannot share a published port: the proxy has it"
    assert services["proxy"]["ports"] == ["127.0.0.1:8000:8000/tcp"]  # Debian's compose v1 spelling
    for name in ("api", "worker", "postgres"):
        assert services[name]["healthcheck"]["test"], name
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["api"]["environment"]["SMTP_HOST"] == "mailpit"
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server api:8000" in nginx and "proxy_buffering off" in nginx  # SSE unbuffered
