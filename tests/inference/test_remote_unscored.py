"""An OpenAI-compatible engine that refuses the choice-scoring fields (``prompt_logprobs``,
``continue_final_message``: HTTP 400) gets closed answers as ``structured_outputs`` from then on, without
probabilities; a request that is wrong whatever its fields (too long) does not switch scoring off. An in-process fake
server stands in for such an engine: vLLM takes the fields (tests/inference/test_remote_engine.py)."""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from dicomnode.peers.ports import free_port
from inference.chat import Turn
from inference.constraints import constraint_for
from inference.model.remote import connect
from inference.record import QType


class _PlainEngine(BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]] = []
    too_long = False

    def do_GET(self) -> None:  # stdlib name
        if self.path == "/v1/models":
            self._json(200, {"data": [{"id": "plain-vlm"}]})
        else:
            self._json(404, {})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        type(self).bodies.append(body)
        if type(self).too_long:
            self._json(400, {"error": {"message": "maximum context length exceeded"}})
        elif "prompt_logprobs" in body or "continue_final_message" in body:
            self._json(400, {"error": {"message": "Unrecognized request argument: prompt_logprobs"}})
        else:
            self._json(200, {"choices": [{"message": {"content": "Yes. Small."}, "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 10, "completion_tokens": 3}})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def plain_engine():
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _PlainEngine)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _PlainEngine.bodies, _PlainEngine.too_long = [], False
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_an_engine_without_prompt_logprobs_answers_unscored(plain_engine: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    model = connect(plain_engine)
    question = Turn("user", "Is there a pneumothorax?")
    _PlainEngine.too_long = True
    with pytest.raises(ValueError, match="maximum context length"):
        model.answer([], question, 8, constraint_for(QType.YES_NO))
    assert model.scores  # the request was wrong, not the fields
    _PlainEngine.too_long = False
    with caplog.at_level(logging.WARNING, logger="inference.model.remote"):
        first = model.answer([], question, 8, constraint_for(QType.YES_NO))
        _PlainEngine.bodies.clear()
        second = model.answer([], question, 8, constraint_for(QType.YES_NO))
    assert first.text == second.text == "Yes. Small." and first.choice_probabilities == {}
    assert not model.scores and sum("does not score choices" in r.message for r in caplog.records) == 1
    assert len(_PlainEngine.bodies) == 1 and "structured_outputs" in _PlainEngine.bodies[0]  # no second try
