"""A scriptable OpenAI-compatible chat server on 127.0.0.1, for judge tests and benchmarks.

It implements ``POST /v1/chat/completions`` over real HTTP (aiohttp, in a thread)
and answers each request by a script: the first rule whose text occurs in the
prompt gives the next behaviour from its list (the last one repeats):

- ``ok`` / ``low``: a valid answer with top / bottom scores, built from the JSON
  schema in ``response_format`` (or the example at the end of the prompt);
- ``fenced``: a valid top answer wrapped in a Markdown code fence;
- ``malformed``: text that is not JSON; ``wrong``: JSON missing a criterion;
- ``status:CODE`` or ``status:CODE:RETRY_AFTER``: an error reply (e.g. ``status:429:1``);
- ``sleep:SECONDS``: answer ``ok`` after a delay (a client timeout when long).

``latency`` delays every reply. The server counts requests and the peak number in
flight, and keeps each request's prompt, arrival time and Authorization header.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Seen:
    prompt: str
    at: float
    auth: str
    behaviour: str


@dataclass
class FakeJudgeServer:
    latency: float = 0.0
    rules: list[tuple[str, list[str]]] = field(default_factory=list)
    default: str = "ok"
    seen: list[Seen] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._cursor: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- scripting ------------------------------------------------------------------------
    def script(self, rules: list[tuple[str, list[str]]], default: str = "ok") -> None:
        with self._lock:
            self.rules, self.default, self._cursor = list(rules), default, {}

    def reset_stats(self) -> None:
        with self._lock:
            self.seen, self.peak_in_flight = [], 0

    @property
    def requests(self) -> int:
        return len(self.seen)

    def _next(self, prompt: str) -> str:
        with self._lock:
            for i, (text, behaviours) in enumerate(self.rules):
                if text in prompt:
                    k = self._cursor.get(i, 0)
                    self._cursor[i] = k + 1
                    return behaviours[min(k, len(behaviours) - 1)]
            return self.default

    # -- answers --------------------------------------------------------------------------
    @staticmethod
    def _answer(body: dict, prompt: str, level: str) -> dict:
        fmt = body.get("response_format") or {}
        schema = (fmt.get("json_schema") or {}).get("schema")
        if schema:
            scores = {
                k: (v["maximum"] if level == "ok" else v["minimum"])
                for k, v in schema["properties"]["scores"]["properties"].items()
            }
            flags = {k: False for k in schema["properties"].get("flags", {}).get("properties", {})}
        else:  # the example the prompt ends with carries top scores and no flags set
            example = json.loads(prompt.strip().splitlines()[-1])
            scores, flags = example["scores"], example.get("flags", {})
        out = {"scores": scores, "reason": f"scripted {level}"}
        if flags:
            out["flags"] = flags
        return out

    async def _handle(self, request):
        from aiohttp import web

        body = await request.json()
        content = body["messages"][-1]["content"]
        prompt = (
            content
            if isinstance(content, str)
            else "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
        )
        behaviour = self._next(prompt)
        with self._lock:
            self.seen.append(Seen(prompt, time.monotonic(), request.headers.get("Authorization", ""), behaviour))
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if behaviour.startswith("status:"):
                parts = behaviour.split(":")
                headers = {"retry-after": parts[2]} if len(parts) > 2 else {}
                return web.json_response(
                    {"error": {"message": f"scripted {parts[1]}", "type": "scripted"}},
                    status=int(parts[1]),
                    headers=headers,
                )
            if behaviour.startswith("sleep:"):
                await asyncio.sleep(float(behaviour.split(":")[1]))
                behaviour = "ok"
            if behaviour == "malformed":
                text = "Sure! The edit looks great, I would give it a 5."
            elif behaviour == "wrong":
                text = json.dumps({"scores": {}, "reason": "forgot"})
            else:
                text = json.dumps(self._answer(body, prompt, "low" if behaviour == "low" else "ok"))
                if behaviour == "fenced":
                    text = f"```json\n{text}\n```"
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
            )
        finally:
            with self._lock:
                self.in_flight -= 1

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> str:
        """Serve in a background thread; returns the base URL (``http://127.0.0.1:PORT/v1``)."""
        from aiohttp import web

        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_post("/v1/chat/completions", self._handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]
            self._runner = runner
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=serve, name="fake-judge", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("fake judge server did not start")
        return self.base_url

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
