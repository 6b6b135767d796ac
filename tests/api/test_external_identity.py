"""External identity: a local identity provider (RSA and EC keys made here, published as a JWKS
over HTTP, tokens signed with PyJWT) and the real `palaver` binary accepting its tokens in
`authenticate`: RS256, ES256 and HS256; the account created on first sight; key rotation
picked up from the JWKS without a restart, and the JWKS downloaded once while its keys suffice;
expired, wrongly signed, wrong issuer or audience, `alg: none` and unknown users refused; the
connection lives no longer than the token.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from node_binary import free_port, palaver_binary

ISSUER = "https://login.example.test"
AUDIENCE = "palaver-chat"
HS_SECRET = "hs256-shared-secret-for-the-test-0123456789"


class Provider:
    """An identity provider's public side: a JWKS document the test can change, and a count of
    how often it was downloaded."""

    def __init__(self) -> None:
        self.keys: dict[str, object] = {}
        self.published: list[str] = []
        self.downloads = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (the http.server name)
                provider.downloads += 1
                body = json.dumps({"keys": [provider.jwk(kid) for kid in provider.published]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"

    def add_rsa(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def add_ec(self, kid: str) -> None:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())

    def jwk(self, kid: str) -> dict:
        key = self.keys[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "RS256"
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
            jwk["alg"] = "ES256"
        jwk["kid"] = kid
        jwk["use"] = "sig"
        return jwk

    def token(self, kid: str, sub: str, *, lifetime: int = 600, iss: str = ISSUER, aud: str = AUDIENCE, signer=None) -> str:
        key = signer if signer is not None else self.keys[kid]
        alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
        now = int(time.time())
        claims = {"sub": sub, "iss": iss, "aud": aud, "iat": now, "exp": now + lifetime}
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def hs256_token(sub: str, *, secret: str = HS_SECRET, lifetime: int = 600) -> str:
    now = int(time.time())
    claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime}
    return jwt.encode(claims, secret, algorithm="HS256")


def unsigned_token(sub: str) -> str:
    now = int(time.time())
    claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600}
    return jwt.encode(claims, None, algorithm="none")


class Node:
    def __init__(self, provider: Provider, *, create_users: bool) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="palaver-jwt-"))
        self.port = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PALAVER_NODE__DATA_DIR": str(self.dir),
            "PALAVER_CLIENT__LISTEN": f"127.0.0.1:{self.port}",
            "PALAVER_ADMIN__LISTEN": f"127.0.0.1:{free_port()}",
            "PALAVER_AUTH__JWT__ISSUER": ISSUER,
            "PALAVER_AUTH__JWT__AUDIENCE": AUDIENCE,
            "PALAVER_AUTH__JWT__JWKS_URL": provider.url,
            "PALAVER_AUTH__JWT__HS256_SECRET": HS_SECRET,
            "PALAVER_AUTH__JWT__CREATE_USERS": "true" if create_users else "false",
            "PALAVER_AUTH__JWT__JWKS_MIN_REFRESH_SECS": "1",
            "PALAVER_AUTH__JWT__LEEWAY_SECS": "0",
        }
        self.log = open(self.dir / "node.log", "wb")
        self.process = subprocess.Popen([str(palaver_binary())], cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("node did not start:\n" + (self.dir / "node.log").read_text(errors="replace"))
                time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def authenticate(port: int, token: str):
    """Open a connection, authenticate with `token`; the reply frame and the open socket."""
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws")
    await ws.send(json.dumps({"type": "hello", "versions": [1], "client": "jwt-test"}))
    json.loads(await asyncio.wait_for(ws.recv(), 10))  # welcome
    await ws.send(json.dumps({"type": "authenticate", "req": 1, "token": token}))
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if frame.get("req") == 1:
            return frame, ws


def auth(port: int, token: str) -> dict:
    async def once():
        frame, ws = await authenticate(port, token)
        await ws.close()
        return frame

    return asyncio.run(once())


@pytest.fixture()
def provider():
    provider = Provider()
    provider.add_rsa("rsa-1")
    provider.add_ec("ec-1")
    provider.published = ["rsa-1", "ec-1"]
    yield provider
    provider.server.shutdown()


def test_tokens_of_the_provider_open_a_session_and_create_the_account(provider):
    node = Node(provider, create_users=True)
    try:
        for token, user in [
            (provider.token("rsa-1", "jwt-alice"), "jwt-alice"),
            (provider.token("ec-1", "jwt-bob"), "jwt-bob"),
            (hs256_token("jwt-carol"), "jwt-carol"),
            (provider.token("rsa-1", "jwt-alice"), "jwt-alice"),
        ]:
            frame = auth(node.port, token)
            assert frame["type"] == "authenticated" and frame["user"] == user, frame
        assert provider.downloads == 1, "the JWKS was downloaded again while its keys sufficed"

        refused = {
            "expired": provider.token("rsa-1", "jwt-alice", lifetime=-60),
            "wrong issuer": provider.token("rsa-1", "jwt-alice", iss="https://evil.test"),
            "wrong audience": provider.token("rsa-1", "jwt-alice", aud="other-app"),
            "signed by a key the provider never published": provider.token(
                "rsa-1", "jwt-alice", signer=rsa.generate_private_key(public_exponent=65537, key_size=2048)
            ),
            "HS256 with another secret": hs256_token("jwt-alice", secret="not-the-secret-0123456789-0123456789"),
            "alg none": unsigned_token("jwt-alice"),
            "a user name palaver refuses": provider.token("rsa-1", "Not A Name"),
        }
        for why, token in refused.items():
            frame = auth(node.port, token)
            expected = "token_expired" if why == "expired" else "token_invalid"
            assert frame["type"] == "error" and frame["code"] == expected, (why, frame)
    finally:
        node.stop()


def test_a_rotated_key_is_picked_up_and_the_old_one_dropped(provider):
    node = Node(provider, create_users=True)
    try:
        old = provider.token("rsa-1", "jwt-dave")
        assert auth(node.port, old)["type"] == "authenticated"

        async def rotate():
            # A session opened before the rotation goes on.
            frame, before = await authenticate(node.port, old)
            assert frame["type"] == "authenticated", frame
            provider.add_rsa("rsa-2")
            provider.published = ["rsa-2", "ec-1"]
            await asyncio.sleep(1.2)  # jwks_min_refresh_secs
            frame, after = await authenticate(node.port, provider.token("rsa-2", "jwt-dave"))
            assert frame["type"] == "authenticated", frame
            await before.send(json.dumps({"type": "ping", "req": 7}))
            while True:
                reply = json.loads(await asyncio.wait_for(before.recv(), 10))
                if reply.get("req") == 7:
                    assert reply["type"] == "pong", reply
                    break
            await before.close()
            await after.close()

        asyncio.run(rotate())
        assert provider.downloads == 2, provider.downloads
        # The key the provider withdrew opens nothing any more (the cache was replaced).
        time.sleep(1.2)
        frame = auth(node.port, provider.token("rsa-1", "jwt-dave"))
        assert frame["type"] == "error" and frame["code"] == "token_invalid", frame
    finally:
        node.stop()


def test_unknown_users_are_refused_unless_accounts_are_created(provider):
    node = Node(provider, create_users=False)
    try:
        frame = auth(node.port, provider.token("rsa-1", "jwt-erin"))
        assert frame["type"] == "error" and frame["code"] == "token_invalid", frame
        assert "unknown user" in frame["message"], frame
    finally:
        node.stop()


def test_the_connection_ends_when_the_token_does(provider):
    node = Node(provider, create_users=True)
    try:

        async def expire():
            frame, ws = await authenticate(node.port, provider.token("ec-1", "jwt-frank", lifetime=3))
            assert frame["type"] == "authenticated", frame
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 15)
            assert time.monotonic() - started < 14

        asyncio.run(expire())
    finally:
        node.stop()
