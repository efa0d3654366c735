"""A stand-in for the Anthropic Messages API, so that the real Claude Code CLI runs a /bak-* command offline
and we see what it really does with it: which command line it runs without asking, which it refuses
("This command requires approval": no user to ask in `claude -p`), what the prompt became after its
substitutions.

Run inside a network namespace of its own (`unshare -rn python3 fake_anthropic.py PLAN LOG -- claude ...`):
it brings the namespace's loopback up, serves the API on 127.0.0.1, and runs the command with
ANTHROPIC_BASE_URL pointing there. Nothing else is reachable.

The stand-in plays the model. Each reply is a server-sent-event stream in the order the Anthropic SDK that
Claude Code embeds accumulates it (anthropics/anthropic-sdk-typescript, src/lib/MessageStream.ts,
#accumulateMessage: `message_start` first, `content_block_start` pushes a block, `input_json_delta`
extends a tool_use block's JSON, `message_delta` sets `stop_reason`, `message_stop` ends). The plan is a
list of tool calls made in turn, one per reply, while the request offers that tool:
  {"tool": "Bash", "args": "--dry-run"}   runs the script line the expanded prompt names, with these args
  {"tool": "Bash", "command": "..."}      runs this exact line
  {"tool": "Skill", "input": {...}}        calls another tool with this input
then a text reply ends the turn. Every request body is appended to LOG (one JSON per line).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SCRIPT_LINE = re.compile(r'python3 (?:"[^"\n]+/scripts/bak_[a-z]+\.py"|\S+/scripts/bak_[a-z]+\.py)')


def loopback_up() -> None:
    """`ip link set lo up`, without needing iproute2: the namespace's loopback starts down."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sh", fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP))


def texts(body: dict) -> str:
    """Every text the request's messages hold (the expanded command prompt among them)."""
    found = []
    for message in body.get("messages", []):
        content = message.get("content")
        for block in [content] if isinstance(content, str) else content or []:
            found.append(block if isinstance(block, str) else block.get("text") or "")
    return "\n".join(found)


def events(model: str, block: dict, delta: dict, stop_reason: str) -> list[tuple[str, dict]]:
    return [("message_start", {"type": "message_start", "message": {
                "id": "msg_stand_in", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}}}),
            ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                               "usage": {"output_tokens": 1}}),
            ("message_stop", {"type": "message_stop"})]


class Model:
    def __init__(self, plan: list[dict], log_path: str):
        self.plan, self.log = list(plan), open(log_path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.calls = 0

    def reply(self, body: dict) -> list[tuple[str, dict]]:
        with self.lock:
            self.log.write(json.dumps(body) + "\n")
            self.log.flush()
            offered = {tool.get("name") for tool in body.get("tools", [])}
            if self.plan and self.plan[0]["tool"] in offered:
                call = self.plan.pop(0)
                self.calls += 1
                tool_input = call.get("input") or {"command": call.get("command") or self.script_line(body, call),
                                                   "description": "run the command the prompt gives"}
                block = {"type": "tool_use", "id": f"toolu_stand_in_{self.calls}", "name": call["tool"], "input": {}}
                return events(body.get("model", "stand-in"), block,
                              {"type": "input_json_delta", "partial_json": json.dumps(tool_input)}, "tool_use")
        return events(body.get("model", "stand-in"), {"type": "text", "text": ""},
                      {"type": "text_delta", "text": "done"}, "end_turn")

    @staticmethod
    def script_line(body: dict, call: dict) -> str:
        found = SCRIPT_LINE.findall(texts(body))
        if not found:
            return "false  # the prompt named no bak script"
        return f"{found[0]} {call.get('args', '')}".strip()


def serve(model: Model) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
            if not self.path.startswith("/v1/messages") or "count_tokens" in self.path:
                self._json({"input_tokens": 1})
                return
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for name, data in model.reply(body):
                self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()

        def _json(self, data: dict) -> None:
            payload = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    plan_path, log_path, dash, *command = argv
    assert dash == "--" and command
    with open(plan_path, encoding="utf-8") as handle:
        plan = json.load(handle)
    loopback_up()
    server = serve(Model(plan, log_path))
    env = {**os.environ, "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}"}
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=150)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
