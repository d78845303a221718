"""Schemathesis, property-based from the running API's /openapi.json, over every operation
with a valid key: no 5xx, and every response (status, content type, headers, body) is what
the schema documents. Against real `assistant api` / `assistant worker` processes on a task
queue of their own."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

from devstack import free_port
from tests.conftest import ROOT, assistant_process
from tests.helpers import wait_until_serving

pytestmark = pytest.mark.slow

# Positive-data acceptance is left out: the schema cannot say that a cursor must name an
# item of the list, or that a tool name must exist, so such well-formed values get a 422.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]
ST = str(Path(sys.executable).parent / "st")


async def run(*args: str, env: dict[str, str], cwd: Path = ROOT) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_schemathesis_finds_no_server_error_and_no_response_off_the_schema(own_queue, pool, model):
    env, tmp_path = own_queue  # its rate limits are off: thousands of requests come from one key
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        assistant_process(["api", "--port", str(port)], env, tmp_path / "api.log") as api,
        assistant_process(["worker"], env, tmp_path / "worker.log"),
    ):
        await wait_until_serving(url, api)
        code, out = await run(sys.executable, "-m", "cli", "users", "create", "fuzzer", "--json", env=env)
        assert code == 0, out
        key = json.loads(out)["api_key"]
        code, out = await run(
            ST,
            "run",
            f"{url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            *CHECKS,
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "25",
            "--seed",
            "20261125",
            "--no-color",
            env=env,
            cwd=tmp_path,  # st keeps its cache in the working directory
        )
        assert api.poll() is None, "the API process died"
    assert code == 0, out[-6000:]
    assert "0 failures" in out or "No issues found" in out or "passed" in out, out[-3000:]
