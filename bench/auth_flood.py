#!/usr/bin/env python3
"""Login/registration abuse against a real palaver node: memory under a hash flood, and how
many wrong passwords one address gets checked per minute however it pipelines.

Starts the node itself (production argon2 cost unless told otherwise), reads its resident
memory from /proc/PID/status (VmRSS, VmHWM), and prints one JSON line per run.

  python3 bench/auth_flood.py flood --palaver $CARGO_TARGET_DIR/release/palaver
  python3 bench/auth_flood.py flood --palaver ... --open       # per-address limits lifted
  python3 bench/auth_flood.py guess --palaver ... --seconds 60

`flood`: 20 connections (each from its own 127.0.0.x address), 64 requests in flight each,
1,000 attempts in all: half `register` of new names, half `login` of an existing user with a
wrong password. Baseline RSS before, peak RSS (sampled every 50 ms, and VmHWM) during, RSS 30 s
after. `--open` lifts the per-address limits, so every attempt reaches the hash pool, as it
would from a thousand addresses.

`guess`: one address, several connections, wrong passwords for a few user names pipelined 64
deep for `--seconds`; counts `invalid_credentials` (passwords actually checked) and
`rate_limited`.

Needs the `websockets` package (pip install websockets).
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import websockets

TOKEN_KEY = "auth-flood-token-key-0123456789abcdef-0123"


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)  # MiB
    return fields


def start_node(binary, env_extra):
    data = tempfile.mkdtemp(prefix="auth-flood-")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PALAVER_NODE__DATA_DIR": data,
        "PALAVER_CLIENT__LISTEN": "127.0.0.1:0",
        "PALAVER_AUTH__TOKEN_KEY": TOKEN_KEY,
        "PALAVER_LOG__FILTER": "warn",
    }
    env.update(env_extra)
    node = subprocess.Popen([binary], env=env, cwd=data, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in node.stdout:
        if " listening on " in line:
            addr = line.split(" listening on ")[1].strip()
            return node, f"ws://{addr}/ws"
    raise SystemExit("node exited before listening")


async def connect(url, source):
    host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    ws = await websockets.connect(url, sock=sock, max_size=None)
    await ws.send(json.dumps({"type": "hello", "versions": [1]}))
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws


async def pipeline(ws, frames, depth):
    """Send `frames` keeping at most `depth` unanswered; return the replies' codes."""
    codes = []
    sent = 0
    inflight = 0
    while sent < len(frames) or inflight:
        while sent < len(frames) and inflight < depth:
            await ws.send(json.dumps(frames[sent]))
            sent += 1
            inflight += 1
        reply = json.loads(await ws.recv())
        if "req" in reply:
            inflight -= 1
            codes.append(reply.get("code", reply["type"]))
    return codes


async def sample_rss(pid, samples, stop):
    while not stop.is_set():
        samples.append(status(pid)["VmRSS"])
        await asyncio.sleep(0.05)


def tally(codes):
    counts = {}
    for code in codes:
        counts[code] = counts.get(code, 0) + 1
    return counts


async def flood(args):
    env = {}
    if args.open:
        env.update({
            "PALAVER_AUTH__REGISTER_MAX_PER_ADDRESS": "0",
            "PALAVER_AUTH__LOGIN_MAX_FAILURES": "10000",
            "PALAVER_AUTH__LOGIN_USER_MAX_FAILURES": "10000",
        })
    node, url = start_node(args.palaver, env)
    try:
        ws = await connect(url, "127.0.0.1")
        await ws.send(json.dumps({"type": "register", "req": 1, "user": "victim", "password": "the right password"}))
        assert json.loads(await ws.recv())["type"] == "registered"
        await ws.close()
        time.sleep(2)
        baseline = status(node.pid)["VmRSS"]
        samples, stop = [], asyncio.Event()
        sampler = asyncio.create_task(sample_rss(node.pid, samples, stop))
        per_conn = args.attempts // args.connections
        started = time.monotonic()

        async def one(c):
            ws = await connect(url, f"127.0.{c // 250}.{c % 250 + 1}")
            frames = []
            for i in range(per_conn):
                req = i + 2
                if i % 2 == 0:
                    frames.append({"type": "register", "req": req, "user": f"flood{c}-{i}", "password": "flood password"})
                else:
                    frames.append({"type": "login", "req": req, "user": "victim", "password": f"wrong {c} {i}"})
            codes = await pipeline(ws, frames, args.depth)
            await ws.close()
            return codes

        results = await asyncio.gather(*(one(c) for c in range(args.connections)))
        elapsed = time.monotonic() - started
        stop.set()
        await sampler
        peak_sampled = max(samples)
        hwm = status(node.pid)["VmHWM"]
        await asyncio.sleep(args.settle)
        settled = status(node.pid)["VmRSS"]
        codes = tally([code for codes in results for code in codes])
        print(json.dumps({
            "run": "flood" + (" (per-address limits lifted)" if args.open else ""),
            "attempts": sum(codes.values()), "seconds": round(elapsed, 1), "replies": codes,
            "baseline_mib": baseline, "peak_mib": max(peak_sampled, hwm), "peak_growth_mib": round(max(peak_sampled, hwm) - baseline, 1),
            "settled_after_s": args.settle, "settled_mib": settled,
            "settled_vs_baseline_pct": round(100 * (settled - baseline) / baseline, 1),
        }))
    finally:
        node.terminate()
        node.wait()


async def guess(args):
    node, url = start_node(args.palaver, {})
    try:
        ws = await connect(url, "127.0.0.1")
        for n, user in enumerate(args.users):
            await ws.send(json.dumps({"type": "register", "req": n + 1, "user": user, "password": "the right password"}))
            assert json.loads(await ws.recv())["type"] == "registered"
        await ws.close()
        deadline = time.monotonic() + args.seconds
        counts = {}

        async def guesser(c):
            ws = await connect(url, "127.0.0.1")
            req = 1
            inflight = 0
            while True:
                while inflight < args.depth and time.monotonic() < deadline:
                    req += 1
                    user = args.users[req % len(args.users)]
                    await ws.send(json.dumps({"type": "login", "req": req, "user": user, "password": f"guess {c} {req}"}))
                    inflight += 1
                if inflight == 0:
                    break
                reply = json.loads(await ws.recv())
                if "req" in reply:
                    inflight -= 1
                    code = reply.get("code", reply["type"])
                    counts[code] = counts.get(code, 0) + 1
            await ws.close()

        await asyncio.gather(*(guesser(c) for c in range(args.connections)))
        print(json.dumps({
            "run": "guess", "seconds": args.seconds, "connections": args.connections, "depth": args.depth,
            "users": len(args.users), "replies": counts,
            "passwords_checked_per_minute": round(counts.get("invalid_credentials", 0) * 60 / args.seconds, 1),
        }))
    finally:
        node.terminate()
        node.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["flood", "guess"])
    parser.add_argument("--palaver", required=True, help="path of the palaver binary (release)")
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--depth", type=int, default=64, help="requests in flight per connection")
    parser.add_argument("--attempts", type=int, default=1000)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to wait before the settled reading")
    parser.add_argument("--open", action="store_true", help="lift the per-address limits (flood)")
    parser.add_argument("--seconds", type=float, default=60.0, help="guessing time (guess)")
    parser.add_argument("--users", nargs="+", default=["alice", "bob", "carol"], help="user names guessed at (guess)")
    args = parser.parse_args()
    if args.mode == "guess" and args.connections == 20:
        args.connections = 4
    asyncio.run(flood(args) if args.mode == "flood" else guess(args))


if __name__ == "__main__":
    sys.exit(main())
