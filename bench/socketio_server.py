"""The Socket.IO peer: python-socketio on aiohttp, the smallest chat server the load generator
can drive like palaver.

Events: `join` (room name; acknowledged) puts the client in a room; `msg` ({room, body})
broadcasts `msg` with the body to everyone in the room, the sender included (the load
generator's publisher counts its own copies to bound what it has in flight).

    python3 bench/socketio_server.py --port 17602
"""
import argparse
import asyncio
import logging

import socketio
from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=17602)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    sio = socketio.AsyncServer(
        async_mode="aiohttp",
        cors_allowed_origins="*",
        logger=False,
        engineio_logger=False,
        # Long keep-alive so idle connections are measured, not pinged.
        ping_interval=25,
        ping_timeout=60,
        max_http_buffer_size=1_000_000,
    )
    app = web.Application()
    sio.attach(app)

    @sio.event
    async def join(sid, room):
        await sio.enter_room(sid, room)
        return "ok"

    @sio.event
    async def msg(sid, data):
        await sio.emit("msg", data.get("body", ""), to=data.get("room"))

    print(f"socket.io listening on {args.host}:{args.port}", flush=True)
    web.run_app(app, host=args.host, port=args.port, print=None, backlog=4096)


if __name__ == "__main__":
    main()
