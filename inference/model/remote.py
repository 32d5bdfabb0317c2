"""A ChatModel served by an OpenAI-compatible engine (vLLM): the same conversation as the local backend, sent over
HTTP. The engine batches across studies and caches prefixes; the node keeps each study's turns in order.

- Messages: the profile's system prompt, the history, the question; images as base64 PNG data URLs, each with a
  ``uuid`` made from its pixels (the engine caches images by it).
- Images are resized here to the model's patch grid (Qwen ``smart_resize``: multiples of ``image_factor`` within
  ``min_pixels``..``max_pixels``), so the engine takes them as they are and boxes map back to source pixels exactly
  as with the local backend (``Generation.model_image_sizes``).
- Closed answers whose choices can be listed (yes/no heads, single choice): one request per choice with the choice
  as the start of the assistant's message (``continue_final_message``) and ``prompt_logprobs``: the log-probabilities
  of the choice's tokens, normalised over the choices (``inference.scores``, as the local backend computes them);
  the most probable choice is the answer, and a yes/no head is continued by one more request (free text). The
  engine computes such requests' prompts whole (vLLM does not read its prefix cache for ``prompt_logprobs``). An
  engine that refuses these fields (HTTP 4xx) gets the old way from then on: ``structured_outputs`` and no scores.
- Other closed answers: ``structured_outputs`` ``choice`` / ``regex`` from ``inference.constraints``.
- Provenance: engine URL, the served model id (``/v1/models``) and the engine version (``/version``).
- Unreachable engine, HTTP 5xx or timeout: ``EngineUnavailable`` (the node re-queues the job).
Uses only the standard library's HTTP client.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from inference.chat import IMAGE_PLACEHOLDER, AnswerConstraint, EngineUnavailable, Generation, Turn
from inference.model.profiles import ModelProfile, ProfiledModel, select_profile
from inference.scores import best_choice, normalise, shared_prefix

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineInfo:
    """Provenance of a served model; field names match ``inference.record.Provenance``."""

    engine_url: str
    model_name: str  # the served model id
    engine_version: str
    profile: str
    demo_model: bool = False
    seed: int = 0

    def provenance_fields(self) -> dict[str, Any]:
        return {"model_dir": self.engine_url, "model_name": self.model_name, "model_version": "",
                "weights_sha256": "", "profile": self.profile, "quantization": "engine", "dtype": "engine",
                "device": "remote", "demo_model": self.demo_model, "transformers_version": "", "seed": self.seed,
                "engine_url": self.engine_url, "engine_version": self.engine_version}


def grid_size(width: int, height: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL's ``smart_resize``: (width, height) rounded to multiples of ``factor`` within the pixel bounds."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return w, h


def image_part(image: Image.Image) -> dict[str, Any]:
    """An ``image_url`` content part: a PNG data URL and a uuid made from the pixels."""
    rgb = image.convert("RGB")
    digest = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return {"type": "image_url", "image_url": {"url": url}, "uuid": digest}


class RemoteChatModel(ProfiledModel):
    """Implements ``inference.chat.ChatModel`` against an OpenAI-compatible ``/v1`` endpoint."""

    concurrent = True  # one instance may serve several studies at once from several threads

    def __init__(self, url: str, profile: ModelProfile, *, name: str | None = None, api_key: str | None = None,
                 timeout_seconds: float = 120.0, image_factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 448 * 448, seed: int = 0, demo_model: bool = False,
                 return_token_ids: bool = False) -> None:
        self.url = url.rstrip("/")
        self.profile = profile
        self.api_key = api_key
        self.timeout_seconds = timeout_seconds
        self.image_factor, self.min_pixels, self.max_pixels = image_factor, min_pixels, max_pixels
        self.seed = seed
        self.return_token_ids = return_token_ids
        self.scores = True  # choices scored from prompt_logprobs; False once the engine has refused them
        self.last_response: dict[str, Any] = {}
        self._count_lock = threading.Lock()
        self.in_flight = 0  # chat requests of this client waiting for the engine now
        self.peak_in_flight = 0  # the most there were at once (studies and parallel questions batched by the engine)
        served = self._get("/models")
        ids = [m.get("id") for m in served.get("data", [])]
        roots = {m.get("id"): m.get("root") for m in served.get("data", [])}
        if name is None:
            if not ids:
                raise EngineUnavailable(f"{self.url}/models lists no model")
            name = str(ids[0])
        elif ids and name not in ids:
            raise ValueError(f"the engine at {self.url} serves {ids}, not {name!r}")
        self.name = name
        demo_model = demo_model or _is_demo(roots.get(name))
        self.info = EngineInfo(self.url, name, self._engine_version(), profile.name, demo_model, seed)

    # -- ChatModel -------------------------------------------------------------------------------------------
    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: AnswerConstraint | None = None) -> Generation:
        if question.role != "user":
            raise ValueError("the question must be a user turn")
        start = time.perf_counter()
        messages, sizes = self.messages([*history, question])
        body: dict[str, Any] = {"model": self.name, "messages": messages, "max_tokens": max_new_tokens,
                                "temperature": 0.0, "seed": self.seed, "skip_special_tokens": True}
        if self.return_token_ids:
            body["return_token_ids"] = True
        refused: ChoicesUnscored | None = None
        if constraint is not None and constraint.scored and self.scores:
            try:
                return self._answer_by_choice(body, constraint, max_new_tokens, sizes, start)
            except ChoicesUnscored as exc:
                refused = exc
        if constraint is not None:
            body["structured_outputs"] = constraint.structured_outputs()
            body["max_tokens"] = constraint.max_tokens(max_new_tokens)  # the grammar may finish past the budget
        response = self._chat(body)  # a 4xx here too: the request itself was wrong (e.g. too long), not scoring
        if refused is not None and self.scores:
            self.scores = False
            log.warning("the engine does not score choices (%s); closed answers go as structured_outputs, "
                        "without probabilities", refused)
        choice = response["choices"][0]
        prompt, cached, generated = _usage(response)
        return Generation(text=str(choice["message"].get("content") or "").strip(), prompt_tokens=prompt - cached,
                          cached_tokens=cached, generated_tokens=generated,
                          seconds=time.perf_counter() - start, model_image_sizes=tuple(sizes),
                          token_ids=_answer_token_ids(choice))

    def _chat(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._count_lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            response = self._post("/chat/completions", body)
        finally:
            with self._count_lock:
                self.in_flight -= 1
        self.last_response = response
        return response

    def _continued(self, body: dict[str, Any], start_of_answer: str, **fields: Any) -> dict[str, Any]:
        """``body`` with the assistant's answer begun by ``start_of_answer`` (the engine continues it)."""
        return {**body, "messages": [*body["messages"], {"role": "assistant", "content": start_of_answer}],
                "continue_final_message": True, "add_generation_prompt": False, **fields}

    def _answer_by_choice(self, body: dict[str, Any], constraint: AnswerConstraint, max_new_tokens: int,
                          sizes: list[tuple[int, int]], start: float) -> Generation:
        """The most probable of the constraint's choices (``inference.scores``) and every choice's probability."""
        choices = constraint.scored
        scored = []
        for choice in choices:
            try:
                scored.append(self._chat(self._continued(body, choice, max_tokens=1, prompt_logprobs=0,
                                                         return_token_ids=True)))
            except ValueError as exc:  # HTTP 4xx: the engine does not take these fields
                raise ChoicesUnscored(str(exc)) from exc
        probabilities, tails = choice_logprobs(choices, scored)
        chosen = best_choice(probabilities, choices)
        prompt, cached, _ = _usage(*scored)
        head_ids = tails[chosen]
        if constraint.choices or len(head_ids) >= max_new_tokens:  # the answer is the choice
            return Generation(text=chosen, prompt_tokens=prompt - cached, cached_tokens=cached,
                              generated_tokens=len(head_ids), seconds=time.perf_counter() - start,
                              model_image_sizes=tuple(sizes), token_ids=tuple(head_ids),
                              choice_probabilities=probabilities)
        rest = self._chat(self._continued(body, chosen, max_tokens=max_new_tokens - len(head_ids)))
        more_prompt, more_cached, generated = _usage(rest)
        answer = rest["choices"][0]
        tail = str(answer["message"].get("content") or "")
        return Generation(text=(chosen + tail).strip(), prompt_tokens=prompt + more_prompt - cached - more_cached,
                          cached_tokens=cached + more_cached, generated_tokens=len(head_ids) + generated,
                          seconds=time.perf_counter() - start, model_image_sizes=tuple(sizes),
                          token_ids=(*head_ids, *_answer_token_ids(answer)),
                          choice_probabilities=probabilities)

    # -- conversation ----------------------------------------------------------------------------------------
    def model_image_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of ``image`` as it is sent (resized on our side to the model's grid)."""
        return grid_size(image.width, image.height, self.image_factor, self.min_pixels, self.max_pixels)

    def resize(self, image: Image.Image) -> Image.Image:
        size = self.model_image_size(image)
        rgb = image.convert("RGB")
        return rgb if rgb.size == size else rgb.resize(size, Image.Resampling.BICUBIC)

    def messages(self, turns: list[Turn]) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
        """OpenAI chat messages for ``turns`` and the size of each image as sent, in order."""
        system = self.profile.system_prompt
        messages: list[dict[str, Any]] = []
        if self.profile.system_role:
            messages.append({"role": "system", "content": system})
        sizes: list[tuple[int, int]] = []
        for n, turn in enumerate(turns):
            if turn.role == "assistant":
                messages.append({"role": "assistant", "content": turn.text})
                continue
            text = turn.text if self.profile.system_role or n else f"{system}\n{turn.text}"
            pieces = text.split(IMAGE_PLACEHOLDER)
            if len(pieces) - 1 > len(turn.images):
                raise ValueError(f"turn {n}: {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholders but "
                                 f"{len(turn.images)} images")
            images = [self.resize(i) for i in turn.images]
            sizes += [i.size for i in images]
            extra = len(images) - (len(pieces) - 1)
            content: list[dict[str, Any]] = [image_part(i) for i in images[:extra]]
            inline = images[extra:]
            if self.profile.image_placement == "first":
                content += [image_part(i) for i in inline]
                content.append({"type": "text", "text": "".join(pieces)})
            else:
                for k, piece in enumerate(pieces):
                    if k:
                        content.append(image_part(inline[k - 1]))
                    if piece:
                        content.append({"type": "text", "text": piece})
            messages.append({"role": "user", "content": content})
        return messages, sizes

    # -- HTTP --------------------------------------------------------------------------------------------------
    def _engine_version(self) -> str:
        root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        try:
            return str(self._request("GET", root + "/version").get("version", ""))
        except (EngineUnavailable, ValueError):
            return ""

    def _get(self, path: str) -> dict[str, Any]:
        return self._request("GET", self.url + path)

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", self.url + path, body)

    def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_seconds) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            if exc.code >= 500:
                raise EngineUnavailable(f"{method} {url}: HTTP {exc.code}: {detail}") from exc
            raise ValueError(f"{method} {url}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise EngineUnavailable(f"{method} {url}: {exc}") from exc


class ChoicesUnscored(RuntimeError):
    """The engine refused a choice-scoring request (no ``prompt_logprobs`` / ``continue_final_message``)."""


def _answer_token_ids(choice: dict[str, Any]) -> tuple[int, ...]:
    """A response choice's generated token ids without the end token it stopped at (the text has none either;
    vLLM lists it when ``finish_reason`` is ``stop`` with no stop string: ``stop_reason`` null)."""
    ids = tuple(int(t) for t in choice.get("token_ids") or ())
    if ids and choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None:
        return ids[:-1]
    return ids


def _usage(*responses: dict[str, Any]) -> tuple[int, int, int]:
    """(prompt, cached prompt, completion) tokens summed over ``responses``."""
    prompt = cached = completion = 0
    for response in responses:
        usage = response.get("usage") or {}
        prompt += int(usage.get("prompt_tokens") or 0)
        cached += int(((usage.get("prompt_tokens_details") or {}).get("cached_tokens")) or 0)
        completion += int(usage.get("completion_tokens") or 0)
    return prompt, cached, completion


def choice_logprobs(choices: tuple[str, ...], responses: list[dict[str, Any]]
                    ) -> tuple[dict[str, float], dict[str, list[int]]]:
    """Probabilities of ``choices`` from one ``prompt_logprobs`` response per choice (same order), and each
    choice's own token ids.

    Each response's prompt is the conversation followed by its choice. Past the tokens all the prompts share
    (the conversation, and any start the choices have in common: equal in every choice, so it cancels out), each
    choice's tokens' log-probabilities are summed. Raises ``ChoicesUnscored`` when a response lacks them."""
    prompts: list[list[int]] = []
    for choice, response in zip(choices, responses, strict=True):
        ids = response.get("prompt_token_ids")
        logprobs = response.get("prompt_logprobs")
        if not ids or not logprobs or len(logprobs) != len(ids):
            raise ChoicesUnscored(f"no prompt_logprobs for the choice {choice!r}")
        prompts.append([int(t) for t in ids])
    shared = shared_prefix(prompts) if len(prompts) > 1 else len(prompts[0]) - 1
    totals: dict[str, float] = {}
    tails: dict[str, list[int]] = {}
    for choice, response, ids in zip(choices, responses, prompts, strict=True):
        if len(ids) <= shared:
            raise ChoicesUnscored(f"the choice {choice!r} adds no token to the prompt")
        total = 0.0
        for position in range(shared, len(ids)):
            entry = response["prompt_logprobs"][position] or {}
            value = entry.get(str(ids[position])) or entry.get(ids[position])
            if not isinstance(value, dict) or "logprob" not in value:
                raise ChoicesUnscored(f"prompt_logprobs lack token {ids[position]} of the choice {choice!r}")
            total += float(value["logprob"])
        totals[choice] = total
        tails[choice] = ids[shared:]
    return normalise(totals), tails


def _is_demo(root: Any) -> bool:
    """The served model is a demo model when its directory (an engine on this machine) carries the demo marker."""
    from inference.model.demo import MARKER_FILE

    try:
        marker = Path(str(root)) / MARKER_FILE
        return bool(root) and marker.is_file() and bool(json.loads(marker.read_text(encoding="utf-8")).get("demo"))
    except (OSError, ValueError):
        return False


def connect(url: str, *, name: str | None = None, api_key_env: str | None = None, timeout_seconds: float = 120.0,
            profile: str = "qwen2_5_vl", seed: int = 0, demo_model: bool = False, **grid: Any) -> RemoteChatModel:
    """A ``RemoteChatModel`` for ``url``; the API key is read from the environment variable ``api_key_env``."""
    api_key = os.environ.get(api_key_env) if api_key_env else None
    if api_key_env and not api_key:
        raise ValueError(f"model.api_key_env: environment variable {api_key_env} is not set")
    chosen = select_profile({}, profile)
    return RemoteChatModel(url, chosen, name=name, api_key=api_key, timeout_seconds=timeout_seconds, seed=seed,
                           demo_model=demo_model, **grid)
