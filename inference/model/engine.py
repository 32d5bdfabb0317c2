"""The ChatModel implementation: prompts via the processor's chat template, greedy decoding, prefix KV cache.

Every ``answer`` renders the whole conversation (system prompt, history, question) with the model's chat template
and tokenizes it with its images. The token ids whose keys/values the cache already holds are compared with the
new prompt: the longest common prefix (never splitting an image, and only where the images are the same pixels)
is reused, the cache is cropped back to it, and only the rest is computed - with ``pixel_values`` for the images in
that rest only. Qwen's 3-D (mrope) positions are computed from the whole prompt with ``get_rope_index``, so
reused and new tokens get exactly the positions a full recompute gives; ``model.model.rope_deltas`` is saved with
the cache state and restored. ``cache="none"`` recomputes the full prompt every time (the reference).

A closed answer whose choices can be listed (``AnswerConstraint.scored``: yes/no heads, single choice) is not
decoded token by token: every choice is scored on the prompt's cache (``inference.scores``), the most probable one
is the answer (or, for yes/no, its head, followed by free greedy text), and the scores go back in
``Generation.choice_probabilities``. Other closed answers (multi choice, boxes) are decoded greedily under their
grammar.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from transformers import DynamicCache

from inference.chat import GRACE_TOKENS, IMAGE_PLACEHOLDER, AnswerConstraint, Generation, Turn
from inference.model.profiles import ModelProfile, ProfiledModel
from inference.scores import best_choice, normalise

log = logging.getLogger(__name__)
CACHE_MODES: tuple[str, ...] = ("prefix", "none")


@dataclass(frozen=True)
class ModelInfo:
    """Provenance of a loaded model; field names match ``inference.record.Provenance``."""

    model_dir: str
    model_name: str
    model_version: str
    weights_sha256: str
    profile: str
    quantization: str  # nf4 | fp4 | int8 | none
    dtype: str
    device: str
    demo_model: bool
    transformers_version: str
    seed: int = 0
    parameters: int = 0
    load_seconds: float = 0.0

    def provenance_fields(self) -> dict[str, Any]:
        """The fields ``inference.record.Provenance`` takes from the model."""
        keys = ("model_dir", "model_name", "model_version", "weights_sha256", "profile", "quantization", "dtype",
                "device", "demo_model", "transformers_version", "seed")
        return {k: getattr(self, k) for k in keys}


@dataclass
class _Span:
    start: int
    end: int
    fingerprint: str


@dataclass
class _PrefixState:
    ids: list[int]  # the tokens whose keys/values ``cache`` holds, in order
    cache: Any  # transformers Cache
    spans: list[_Span] = field(default_factory=list)
    rope_deltas: torch.Tensor | None = None


def image_fingerprint(image: Image.Image) -> str:
    h = hashlib.sha256(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LoadedModel(ProfiledModel):
    """A loaded VLM answering conversation turns (implements ``inference.chat.ChatModel``)."""

    def __init__(self, model: Any, processor: Any, profile: ModelProfile, info: ModelInfo,
                 cache: str = "prefix", seed: int = 0) -> None:
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, not {cache!r}")
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.profile = profile
        self.info = info
        self.cache_mode = cache
        self.seed = seed
        self.device = torch.device(info.device)
        self._state: _PrefixState | None = None
        self.last_prompt_logits: torch.Tensor | None = None
        self.last_prompt_ids: list[int] = []
        self._lock = threading.Lock()  # one conversation at a time: the prefix cache is per model
        self._image_token_id = self._find_image_token_id()
        self._eos = self._eos_ids()
        self._specials = sorted({t for t in self.tokenizer.all_special_tokens
                                 + list(self.tokenizer.get_added_vocab()) if t}, key=len, reverse=True)
        self._vision_dtype = self._find_vision_dtype()
        self._token_texts: list[str] | None = None

    # -- ChatModel -------------------------------------------------------------------------------------------
    def reset_cache(self) -> None:
        """Forget the cached prefix (a new study starts; also frees memory)."""
        self._state = None

    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: AnswerConstraint | None = None) -> Generation:
        with self._lock:
            return self._answer(history, question, max_new_tokens, constraint)

    @torch.inference_mode()
    def _answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
                constraint: AnswerConstraint | None = None) -> Generation:
        if question.role != "user":
            raise ValueError("the question must be a user turn")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        turns = [*history, question]
        messages, images = self._messages(turns)
        full_text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prefix_ok = self.cache_mode == "prefix"
        if prefix_ok:
            history_text = self.processor.apply_chat_template(messages[:-1], tokenize=False,
                                                              add_generation_prompt=False)
            if not full_text.startswith(history_text):
                log.debug("chat template does not keep the history as a prefix; recomputing the full prompt")
                prefix_ok = False
        inputs = self.processor(text=[full_text], images=images or None, return_tensors="pt")
        ids: list[int] = inputs["input_ids"][0].tolist()
        spans = self._image_spans(ids, images, inputs)
        reuse = self._reusable(ids, spans) if prefix_ok else 0
        cache, reuse = self._cache_for(reuse)
        new_images = [i for i, s in enumerate(spans) if s.start >= reuse]
        positions, rope_deltas = self._positions(inputs, len(ids))
        model_kwargs = self._vision_inputs(inputs, new_images)
        input_ids = torch.tensor([ids[reuse:]], device=self.device)
        pos = positions[..., reuse:] if positions is not None else None
        out = self.model(input_ids=input_ids, position_ids=pos, past_key_values=cache, use_cache=True,
                         logits_to_keep=1, **model_kwargs)
        cache = out.past_key_values
        self.last_prompt_logits = out.logits[0, -1].float().cpu()  # next-token logits after the prompt (tests)
        self.last_prompt_ids = ids
        probabilities: dict[str, float] = {}
        if constraint is not None and constraint.scored:
            probabilities, chosen = self._choose(constraint, full_text, ids, out.logits[0, -1], cache, rope_deltas)
            if constraint.choices or len(chosen) >= max_new_tokens:  # the answer is the choice: nothing to generate
                self._state = (_PrefixState(ids=ids, cache=cache, spans=spans, rope_deltas=rope_deltas)
                               if self.cache_mode == "prefix" else None)
                return self._generation(chosen, ids, reuse, start, inputs, len(images), probabilities)
            # the head is chosen; the rest of the answer is free text after it
            out = self.model(input_ids=torch.tensor([chosen], device=self.device),
                             position_ids=self._span_positions(len(ids), len(chosen), rope_deltas),
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            decoder = _Decoder(self, None, max_new_tokens)
            generated = [*chosen, decoder.pick(out.logits[0, -1])]
        else:
            decoder = _Decoder(self, constraint, max_new_tokens)
            generated = [decoder.pick(out.logits[0, -1])]
        while decoder.more(generated):
            length = len(ids) + len(generated) - 1
            step_pos = self._step_position(length, rope_deltas)
            out = self.model(input_ids=torch.tensor([[generated[-1]]], device=self.device), position_ids=step_pos,
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            generated.append(decoder.pick(out.logits[0, -1]))
        if self.cache_mode == "prefix":
            self._state = _PrefixState(ids=ids + generated[:-1], cache=cache, spans=spans, rope_deltas=rope_deltas)
        else:
            self._state = None
        return self._generation(generated, ids, reuse, start, inputs, len(images), probabilities)

    def _generation(self, generated: list[int], ids: list[int], reuse: int, start: float, inputs: Any,
                    n_images: int, probabilities: dict[str, float]) -> Generation:
        text_ids = [t for t in generated if t not in self._eos]
        # An answer cut by its budget inside a multi-byte character ends without the partial character (U+FFFD),
        # as a serving engine's incremental detokenizer returns it: both backends keep the same history.
        text = self.tokenizer.decode(text_ids, skip_special_tokens=True).rstrip("\ufffd").strip()
        return Generation(text=text, prompt_tokens=len(ids) - reuse, cached_tokens=reuse,
                          generated_tokens=len(generated), seconds=time.perf_counter() - start,
                          model_image_sizes=self._model_image_sizes(inputs, n_images),
                          token_ids=tuple(text_ids), choice_probabilities=probabilities)

    # -- choices (inference.scores) ------------------------------------------------------------------------
    def choice_tokens(self, prompt_text: str, choices: tuple[str, ...]) -> dict[str, list[int]]:
        """Each choice's tokens after ``prompt_text``, as the prompt and the choice tokenize together (the
        tokenizer alone, image placeholders unexpanded: they come before the choice and do not change it)."""
        prompt = self.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        tokens: dict[str, list[int]] = {}
        for choice in choices:
            joined = self.tokenizer(prompt_text + choice, add_special_tokens=False)["input_ids"]
            if joined[:len(prompt)] == prompt and len(joined) > len(prompt):
                tokens[choice] = joined[len(prompt):]
            else:  # the choice merges with the prompt's last token: score it as tokenized alone
                log.debug("choice %r does not tokenize apart from the prompt; scored as tokenized alone", choice)
                tokens[choice] = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
        return tokens

    def _choose(self, constraint: AnswerConstraint, prompt_text: str, ids: list[int], logits: torch.Tensor,
                cache: Any, rope_deltas: torch.Tensor | None) -> tuple[dict[str, float], list[int]]:
        """Every scored choice's probability (``inference.scores``) and the tokens of the most probable one.

        Each choice's tokens but its last run on the prompt's cache (the logits after the prompt give the first
        token's probability); the cache is cropped back to the prompt after each."""
        tokens = self.choice_tokens(prompt_text, constraint.scored)
        first = torch.log_softmax(logits.float(), dim=-1)
        logprobs: dict[str, float] = {}
        for choice, sequence in tokens.items():
            total = float(first[sequence[0]])
            if len(sequence) > 1:
                out = self.model(input_ids=torch.tensor([sequence[:-1]], device=self.device),
                                 position_ids=self._span_positions(len(ids), len(sequence) - 1, rope_deltas),
                                 past_key_values=cache, use_cache=True, logits_to_keep=len(sequence) - 1)
                steps = torch.log_softmax(out.logits[0].float(), dim=-1)
                total += float(sum(steps[i, token] for i, token in enumerate(sequence[1:])))
                cache.crop(len(ids) - cache.get_seq_length())  # a negative count: tokens off the end
            logprobs[choice] = total
        probabilities = normalise(logprobs)
        return probabilities, tokens[best_choice(probabilities, constraint.scored)]

    def model_image_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of ``image`` as the model will see it (the processor's resize, without the model)."""
        inputs = self.processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        return self._model_image_sizes(inputs, 1)[0]

    def token_texts(self) -> list[str]:
        """Each vocabulary id decoded alone ("" for special tokens and partial UTF-8); built once, on first use."""
        if self._token_texts is None:
            special = set(self.tokenizer.all_special_ids) | set(self._eos)
            size = max(len(self.tokenizer), int(self.model.get_output_embeddings().weight.shape[0]))
            texts = []
            for i in range(size):
                text = "" if i in special or i >= len(self.tokenizer) else self.tokenizer.decode(
                    [i], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                texts.append("" if "\ufffd" in text else text)
            self._token_texts = texts
        return self._token_texts

    # -- prompt --------------------------------------------------------------------------------------------
    def _clean(self, text: str) -> str:
        """Remove special-token strings from free text so it cannot inject image or control tokens."""
        for special in self._specials:
            if special in text:
                text = text.replace(special, "")
        return text

    def _messages(self, turns: list[Turn]) -> tuple[list[dict[str, Any]], list[Image.Image]]:
        system = self.profile.system_prompt
        messages: list[dict[str, Any]] = []
        if self.profile.system_role:
            messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
        images: list[Image.Image] = []
        for n, turn in enumerate(turns):
            if turn.role == "assistant":
                messages.append({"role": "assistant", "content": [{"type": "text", "text": self._clean(turn.text)}]})
                continue
            text = turn.text
            if not self.profile.system_role and n == 0:
                text = f"{system}\n{text}"
            pieces = text.split(IMAGE_PLACEHOLDER)
            placeholders = len(pieces) - 1
            if placeholders > len(turn.images):
                raise ValueError(f"turn {n}: {placeholders} {IMAGE_PLACEHOLDER} placeholders but "
                                 f"{len(turn.images)} images")
            extra = len(turn.images) - placeholders
            content: list[dict[str, Any]] = [{"type": "image"} for _ in range(extra)]
            if self.profile.image_placement == "first" and placeholders:
                content += [{"type": "image"} for _ in range(placeholders)]
                content.append({"type": "text", "text": self._clean("".join(pieces))})
            else:
                for i, piece in enumerate(pieces):
                    if i:
                        content.append({"type": "image"})
                    if piece:
                        content.append({"type": "text", "text": self._clean(piece)})
            images.extend(img.convert("RGB") for img in turn.images)
            messages.append({"role": "user", "content": content})
        return messages, images

    # -- images --------------------------------------------------------------------------------------------
    def _tokens_per_image(self, inputs: Any, n_images: int, total: int) -> list[int]:
        if n_images == 0:
            return []
        if self.profile.pixel_layout == "patches":
            merge = int(getattr(self.processor.image_processor, "merge_size", 2))
            return [int(g.prod()) // (merge * merge) for g in inputs["image_grid_thw"]]
        return [total // n_images] * n_images

    def _image_spans(self, ids: list[int], images: list[Image.Image], inputs: Any) -> list[_Span]:
        positions = [i for i, t in enumerate(ids) if t == self._image_token_id]
        counts = self._tokens_per_image(inputs, len(images), len(positions))
        if sum(counts) != len(positions):
            raise RuntimeError(f"{len(positions)} image tokens in the prompt, expected {sum(counts)}")
        spans, k = [], 0
        for image, count in zip(images, counts, strict=True):
            spans.append(_Span(positions[k], positions[k + count - 1] + 1, image_fingerprint(image)))
            k += count
        return spans

    def _reusable(self, ids: list[int], spans: list[_Span]) -> int:
        """How many leading tokens of ``ids`` the cached state can supply (never splitting or mixing images)."""
        state = self._state
        if state is None:
            return 0
        reuse = min(common_prefix(state.ids, ids), len(ids) - 1)
        old = {(s.start, s.end): s.fingerprint for s in state.spans}
        for span in spans:
            if span.start >= reuse:
                break
            if span.end > reuse or old.get((span.start, span.end)) != span.fingerprint:
                reuse = span.start
                break
        return reuse

    def _cache_for(self, reuse: int) -> tuple[Any, int]:
        """(cache cropped to ``reuse`` tokens, reuse) or (a new cache, 0). The state is taken: a failure leaves none."""
        state, self._state = self._state, None
        if reuse == 0 or state is None:
            return DynamicCache(config=self.model.config.get_text_config()), 0
        length = state.cache.get_seq_length()
        if length != len(state.ids):  # cannot happen unless a forward pass was interrupted; be safe
            log.warning("prefix cache holds %d tokens, expected %d; recomputing", length, len(state.ids))
            return DynamicCache(config=self.model.config.get_text_config()), 0
        state.cache.crop(reuse - length)  # a negative count removes that many tokens from the end
        if state.rope_deltas is not None and hasattr(self.model, "model"):
            self.model.model.rope_deltas = state.rope_deltas
        return state.cache, reuse

    def _vision_inputs(self, inputs: Any, new_images: list[int]) -> dict[str, Any]:
        if not new_images:
            return {}
        pv = inputs["pixel_values"]
        if self.profile.pixel_layout == "patches":
            grid = inputs["image_grid_thw"]
            bounds = [0, *torch.cumsum(grid.prod(-1), 0).tolist()]
            first, last = new_images[0], new_images[-1]
            pixel_values = pv[bounds[first]:bounds[last + 1]]
            kwargs = {"image_grid_thw": grid[first:last + 1].to(self.device)}
        else:
            pixel_values = pv[new_images[0]:new_images[-1] + 1]
            kwargs = {}
        kwargs["pixel_values"] = pixel_values.to(self.device, self._vision_dtype)
        return kwargs

    def _model_image_sizes(self, inputs: Any, n_images: int) -> tuple[tuple[int, int], ...]:
        if n_images == 0:
            return ()
        if self.profile.pixel_layout == "patches":
            patch = int(getattr(self.processor.image_processor, "patch_size", 14))
            return tuple((int(w) * patch, int(h) * patch) for _, h, w in inputs["image_grid_thw"].tolist())
        pv = inputs["pixel_values"]
        return tuple((int(pv.shape[-1]), int(pv.shape[-2])) for _ in range(n_images))

    # -- positions -----------------------------------------------------------------------------------------
    def _positions(self, inputs: Any, length: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Positions of the whole prompt: Qwen mrope (3, 1, L) with its rope delta, else 1-D (1, L)."""
        if self.profile.position_ids != "mrope":
            return torch.arange(length, device=self.device)[None], None
        if "image_grid_thw" not in inputs:
            pos = torch.arange(length, device=self.device).view(1, 1, -1).expand(3, 1, -1)
            deltas = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        else:
            pos, deltas = self.model.model.get_rope_index(
                inputs["input_ids"].to(self.device), mm_token_type_ids=inputs["mm_token_type_ids"].to(self.device),
                image_grid_thw=inputs["image_grid_thw"].to(self.device),
                attention_mask=inputs["attention_mask"].to(self.device))
        self.model.model.rope_deltas = deltas
        return pos, deltas

    def _step_position(self, position: int, rope_deltas: torch.Tensor | None) -> torch.Tensor:
        return self._span_positions(position, 1, rope_deltas)

    def _span_positions(self, position: int, count: int, rope_deltas: torch.Tensor | None) -> torch.Tensor:
        """Positions of ``count`` text tokens from ``position`` on, after the prompt (1-D, or mrope's 3 axes)."""
        span = torch.arange(position, position + count, device=self.device)[None]
        if self.profile.position_ids != "mrope":
            return span
        if rope_deltas is None:  # _positions gives mrope prompts their deltas
            raise ValueError("mrope step positions need the prompt's rope deltas")
        return (span + rope_deltas).view(1, 1, count).expand(3, 1, count)

    # -- setup ---------------------------------------------------------------------------------------------
    def _find_image_token_id(self) -> int:
        config = self.model.config
        for key in ("image_token_id", "image_token_index"):
            value = getattr(config, key, None)
            if value is not None:
                return int(value)
        return int(self.processor.image_token_id)

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids

    def _find_vision_dtype(self) -> torch.dtype:
        for name in self.profile.vision_modules:
            try:
                module = self.model.get_submodule(name)
            except AttributeError:
                continue
            for p in module.parameters():
                if p.is_floating_point():
                    return p.dtype
        return self.model.dtype


class _Decoder:
    """Greedy token choice, constrained when the question is closed.

    Unconstrained: the argmax, until an end token or the budget. Constrained: the most likely token whose text
    keeps the answer viable under the constraint (partial regex match); an end token only once the answer is
    complete. A constrained answer still incomplete at its budget may take ``GRACE_TOKENS`` more, and
    then prefers tokens that complete it; a complete one ends at its budget. After a yes/no head the rest is free.
    """

    def __init__(self, model: LoadedModel, constraint: AnswerConstraint | None, budget: int) -> None:
        self.constraint = constraint
        self.budget = budget
        self.eos = model._eos
        self.texts = model.token_texts() if constraint is not None else []
        self.text = ""
        self.done = False
        self._steps = 0  # tokens picked so far

    def _free(self) -> bool:
        return self.constraint is None or self.constraint.free(self.text)

    def more(self, generated: list[int]) -> bool:
        if self.done or generated[-1] in self.eos:
            return False
        if len(generated) < self.budget:
            return True
        if self._free() or self.constraint is None or self.constraint.complete(self.text):
            return False
        return len(generated) < self.budget + GRACE_TOKENS

    def pick(self, logits: torch.Tensor) -> int:
        if self._free():
            self._steps += 1
            token = int(logits.argmax())
            if self.constraint is not None and token not in self.eos and token < len(self.texts):
                self.text += self.texts[token]
            return token
        constraint = self.constraint
        assert constraint is not None
        complete = constraint.complete(self.text)
        order = torch.argsort(logits.float(), descending=True).tolist()
        eos = next(iter(self.eos), None)
        finishing = self._steps >= self.budget - 1
        if complete and finishing and eos is not None:
            self._steps += 1
            return eos
        fallback: int | None = None
        for token in order:
            if token in self.eos:
                if complete:
                    self._steps += 1
                    return token
                continue
            piece = self.texts[token] if token < len(self.texts) else ""
            if not piece or not constraint.viable(self.text + piece):
                continue
            if not finishing or constraint.complete(self.text + piece):
                fallback = token
                break
            if fallback is None:
                fallback = token
        if fallback is None:  # nothing viable (cannot happen with a byte-level vocabulary); end the answer
            self.done = True
            self._steps += 1
            return eos if eos is not None else int(order[0])
        self.text += self.texts[fallback]
        self._steps += 1
        return fallback
