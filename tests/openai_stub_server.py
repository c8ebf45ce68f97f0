"""A small OpenAI-compatible HTTP server for tests (127.0.0.1, random port).

Implements ``POST /v1/chat/completions``; records every request (path,
headers, JSON body) and answers from a per-cluster script::

    with OpenAIStub() as stub:
        stub.script[2] = [stub.status(429), stub.reply("dogs")]   # then repeats the last
        stub.script[3] = [stub.status(500)]                        # 500 forever
        stub.script[4] = [stub.hang(5)]                            # longer than the timeout
        ... OpenAI(base_url=stub.base_url, ...) ...
        stub.requests  # [{"path", "headers" (lowercase names), "body", "cluster"}, ...]

The cluster of a request is read from its user text ("Cluster <id> ...");
clusters without a script answer ``{"name": "cluster <id>", ...}``. Set
``reject_response_format`` to answer 400 to requests that carry
``response_format`` (an endpoint without structured outputs).
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def cluster_of(body):
    """The cluster id named in a chat request's text, or None."""
    for message in body.get("messages", []):
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
        for part in parts:
            if part.get("type") == "text":
                m = re.search(r"\bCluster (-?\d+)\b", part.get("text") or "")
                if m and message.get("role") == "user":
                    return int(m.group(1))
    return None


def image_urls(body):
    """The image URLs of a chat request, in order."""
    urls = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            urls += [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
    return urls


class OpenAIStub:
    def __init__(self):
        self.requests = []
        self.script = {}
        self.default = None  # callable(cluster, body) -> action; None = reply "cluster <id>"
        self.reject_response_format = False
        self._served = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"_raw": raw.decode(errors="replace")}
                cluster = cluster_of(body) if isinstance(body, dict) else None
                with stub._lock:
                    stub.requests.append(
                        {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body, "cluster": cluster}
                    )
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                action = stub._next_action(cluster, body)
                kind = action[0]
                if kind == "hang":
                    stub._stop.wait(action[1])
                    action = stub.reply("too late")
                    kind = action[0]
                try:
                    if kind == "status":
                        _, code, headers = action
                        self._send(code, {"error": {"message": f"stub error {code}", "type": "stub"}}, headers)
                    elif kind == "content":
                        self._send(200, stub._completion(body, action[1]))
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # actions -----------------------------------------------------------

    @staticmethod
    def reply(name, description="A stub description.", text=None):
        """Answer with a JSON name (or with ``text`` verbatim)."""
        if text is None:
            text = json.dumps({"name": name, "description": description})
        return ("content", text)

    @staticmethod
    def status(code, headers=None):
        """Answer with an HTTP error; 429/5xx retry quickly (retry-after-ms: 20)."""
        return ("status", code, headers if headers is not None else {"retry-after-ms": "20"})

    @staticmethod
    def hang(seconds):
        """Answer only after ``seconds`` (longer than the client's timeout)."""
        return ("hang", seconds)

    # server ---------------------------------------------------------------

    @property
    def base_url(self):
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def _next_action(self, cluster, body):
        if self.reject_response_format and "response_format" in body:
            return self.status(400, {})
        with self._lock:
            n = self._served.get(cluster, 0)
            self._served[cluster] = n + 1
        steps = self.script.get(cluster)
        if steps:
            return steps[min(n, len(steps) - 1)]
        if self.default is not None:
            return self.default(cluster, body)
        return self.reply(f"cluster {cluster}")

    def _completion(self, body, content):
        return {
            "id": f"chatcmpl-stub{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content, "refusal": None},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    def requests_for(self, cluster):
        return [r for r in self.requests if r["cluster"] == cluster]

    def start(self):
        self.thread.start()
        return self

    def close(self):
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
