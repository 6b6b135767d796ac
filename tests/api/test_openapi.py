"""The server API against its description: schemathesis (from PyPI) drives the real `palaver`
binary from docs/openapi.json and checks every answer's status, headers, content type and body
against it, that schema-violating requests are refused, that routes refuse requests without
credentials, and that undocumented methods get 405 with `Allow`.

Three runs, each with a fixed seed so a failure reproduces:
- the key routes with the admin token;
- the other routes with an API key of every scope, with generated parameters (mostly refused:
  unknown users and rooms, invalid names);
- the same with real parameters (a user, a room and a member that exist), so requests reach
  the rooms and the store (erasing users left out, or the fixed member would be gone).

The binary is the one `node_binary.palaver_binary` names.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from node_binary import REPO_ROOT, free_port, palaver_binary

SCHEMA = REPO_ROOT / "docs" / "openapi.json"
ADMIN_TOKEN = "admin-token-for-api-tests-0123456789"
SEED = "20261207"
MAX_EXAMPLES = "25"
RUN_TIMEOUT_S = 600

# Every check but `positive_data_acceptance`: a request that fits the schema may still be
# refused on its merits (an unknown user, a room the acting user is not in), and the schema
# cannot know which names exist.
CHECKS = ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]


def call(base: str, method: str, path: str, bearer: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {bearer}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


@pytest.fixture(scope="module")
def node():
    binary = palaver_binary()
    if not binary.exists():
        pytest.fail(f"{binary} is missing: build it first (cargo build -p node)")
    data_dir = Path(tempfile.mkdtemp(prefix="palaver-api-"))
    admin_port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PALAVER_NODE__DATA_DIR": str(data_dir),
        "PALAVER_CLIENT__LISTEN": f"127.0.0.1:{free_port()}",
        "PALAVER_ADMIN__LISTEN": f"127.0.0.1:{admin_port}",
        "PALAVER_ADMIN__TOKEN": ADMIN_TOKEN,
    }
    log = open(data_dir / "node.log", "wb")
    process = subprocess.Popen([str(binary)], cwd=data_dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{admin_port}/api/v1"
    deadline = time.monotonic() + 30
    while True:
        try:
            status, _ = call(base, "GET", "/keys", ADMIN_TOKEN)
            if status == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail("the node did not start:\n" + (data_dir / "node.log").read_text(errors="replace"))
        time.sleep(0.1)
    yield base, data_dir
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    shutil.rmtree(data_dir, ignore_errors=True)


def schemathesis(base: str, bearer: str, *args: str, config: str | None = None) -> None:
    command = [sys.executable, "-m", "schemathesis.cli"]
    work = Path(tempfile.mkdtemp(prefix="palaver-st-"))
    if config is not None:
        (work / "schemathesis.toml").write_text(config)
        command += ["--config-file", str(work / "schemathesis.toml")]
    command += [
        "run",
        str(SCHEMA),
        "--url",
        base,
        "--header",
        f"Authorization: Bearer {bearer}",
        "--seed",
        SEED,
        "--max-examples",
        MAX_EXAMPLES,
        "--workers",
        "1",
        "--request-timeout",
        "30",
        *CHECKS,
        *args,
    ]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    shutil.rmtree(work, ignore_errors=True)
    output = done.stdout + done.stderr
    print(output[-6000:])
    assert done.returncode == 0, f"schemathesis found failures (exit {done.returncode}):\n{output[-6000:]}"


def test_key_routes_match_the_description(node):
    base, _ = node
    schemathesis(base, ADMIN_TOKEN, "--include-path-regex", "^/keys")


def test_other_routes_match_the_description_with_generated_parameters(node):
    base, _ = node
    status, minted = call(base, "POST", "/keys", ADMIN_TOKEN, {"name": "conformance", "scopes": ["users", "rooms", "messages", "history", "webhooks"]})
    assert status == 201, minted
    schemathesis(base, minted["key"], "--exclude-path-regex", "^/keys")


def test_other_routes_match_the_description_on_real_rooms(node):
    base, _ = node
    status, minted = call(base, "POST", "/keys", ADMIN_TOKEN, {"name": "real rooms", "scopes": ["users", "rooms", "messages", "history", "webhooks"]})
    assert status == 201, minted
    key = minted["key"]
    for name in ["owner-1", "member-1"]:
        status, answer = call(base, "POST", "/users", key, {"name": name})
        assert status == 201, answer
    status, room = call(base, "POST", "/rooms?as=owner-1", key, {"name": "conformance"})
    assert status == 201, room
    status, answer = call(base, "PUT", f"/rooms/{room['id']}/members/member-1?as=owner-1", key)
    assert status == 200, answer
    status, answer = call(base, "POST", f"/rooms/{room['id']}/messages?as=owner-1", key, {"id": "m-1", "body": "hello"})
    assert status == 201, answer
    config = f'[parameters]\n"as" = "owner-1"\nroom = "{room["id"]}"\nuser = "member-1"\n'
    # Erasing the fixed member would turn every later request about them into a 404, which the
    # stateful checks would take for a lost resource; erasure is covered by the run before.
    schemathesis(base, key, "--exclude-path-regex", "^/keys", "--exclude-operation-id", "deleteUser", config=config)
    # The real room took posts, and still reads back.
    status, history = call(base, "GET", f"/rooms/{room['id']}/messages?as=owner-1", key)
    assert status == 200 and any(entry["id"] == "m-1" for entry in history["entries"]), history
