"""What the tests of this directory share: where the `palaver` binary is, and a free port.

The binary is ``PALAVER_BIN``, else ``$CARGO_TARGET_DIR/debug/palaver`` (``target`` by default).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def palaver_binary() -> Path:
    if os.environ.get("PALAVER_BIN"):
        return Path(os.environ["PALAVER_BIN"])
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    return target / "debug" / "palaver"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
