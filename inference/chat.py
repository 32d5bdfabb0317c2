"""The contract between the stage flow and a vision-language model.

The flow (``inference.flow``) walks the stages as one growing conversation and asks a ``ChatModel`` for each
answer. The model implementation (``inference.model.engine``, ``inference.model.remote``) owns prompt formatting,
image tokens, decoding and the prefix KV cache: since the history only ever grows by the last question and answer,
it reuses the computed prefix for the next question. The flow never sees tokens or tensors. A closed question comes
with an ``AnswerConstraint`` (made by ``inference.constraints``) that the decoding follows.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, Protocol

import regex
from PIL import Image

IMAGE_PLACEHOLDER = "<image>"  # where an image enters a user turn's text (CXRTrek wording)
GRACE_TOKENS = 48  # tokens a constrained answer may take past its budget to finish its grammar


class BoxConvention(StrEnum):
    """How a model writes box coordinates."""

    PERCENT = "percent"  # CXRTrek: percent of image width / height, two decimals
    PER_MILLE = "per_mille"  # Qwen2-VL: 0..1000 of the (resized) image
    RESIZED_PIXELS = "resized_pixels"  # Qwen2.5-VL: absolute pixels of the resized model input
    UNIT = "unit"  # fractions 0..1


class EngineUnavailable(RuntimeError):
    """A serving engine is unreachable, answered 5xx or timed out: retry the study later, do not fail it."""


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str  # user text may hold IMAGE_PLACEHOLDER once per image, in order
    images: tuple[Image.Image, ...] = ()


@dataclass(frozen=True)
class Generation:
    text: str  # decoded answer, special tokens removed
    prompt_tokens: int  # prompt tokens computed for this answer
    cached_tokens: int  # prompt tokens reused from the prefix cache
    generated_tokens: int
    seconds: float
    # For RESIZED_PIXELS boxes: (width, height) of each image as the model saw it, in conversation order.
    model_image_sizes: tuple[tuple[int, int], ...] = field(default=())
    token_ids: tuple[int, ...] = ()  # the answer's token ids where the backend reports them (parity tests)
    # A closed answer with enumerable choices (``AnswerConstraint.scored``): each choice's probability, normalised
    # over the choices (``inference.scores``); empty where the backend gives none.
    choice_probabilities: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class AnswerConstraint:
    """The form an answer must take. ``pattern`` is the whole answer (a regex vLLM and ``regex`` both accept);
    ``choices`` is set when the answer is exactly one of them; ``head`` when only the start is constrained, and
    ``heads`` lists the texts that head may be (yes/no: ``Yes.``, ``No.``)."""

    kind: str  # yes_no | single_choice | multi_choice | detection
    pattern: str
    choices: tuple[str, ...] = ()
    head: str | None = None  # after a match of this prefix the text is free
    heads: tuple[str, ...] = ()  # every text ``head`` matches, when they can be listed

    @property
    def scored(self) -> tuple[str, ...]:
        """The enumerable choices a backend scores and picks from (the whole answer or its head); () for grammars
        without a finite list (multi choice, boxes), which are decoded token by token."""
        return self.choices or self.heads

    @cached_property
    def compiled(self) -> Any:
        return regex.compile(self.head if self.head else self.pattern)

    def complete(self, text: str) -> bool:
        """``text`` is a whole answer (for ``head`` constraints: the head is written)."""
        return self.compiled.fullmatch(text) is not None

    def viable(self, text: str) -> bool:
        """``text`` can still be extended into a whole answer (or is free text after the head)."""
        if self.head and self.compiled.match(text) is not None:
            return True
        return self.compiled.fullmatch(text, partial=True) is not None

    def free(self, text: str) -> bool:
        """The head is written: from here on nothing is constrained."""
        return bool(self.head) and self.compiled.match(text) is not None

    def max_tokens(self, budget: int) -> int:
        """A hard token limit that lets the grammar finish (a free-tail constraint keeps its budget)."""
        return budget if self.head else budget + GRACE_TOKENS

    def structured_outputs(self) -> dict[str, Any]:
        """vLLM's ``structured_outputs`` request field."""
        if self.choices:
            return {"choice": list(self.choices)}
        return {"regex": self.pattern.replace("(?:", "(")}  # plain groups: the engine's regex dialects all take them


class ModelIdentity(Protocol):
    """What every model says of itself (``ChatModel.info``); backends add their own details."""

    @property
    def demo_model(self) -> bool: ...


class ChatModel(Protocol):
    """A loaded vision-language model that answers the next user turn of a conversation."""

    @property
    def info(self) -> ModelIdentity: ...

    @property
    def box_convention(self) -> BoxConvention: ...

    @property
    def answer_wrapper(self) -> str | None:
        """Regex-free name of the answer wrapper, e.g. "think_answer" for <think>..</think><answer>..</answer>."""
        ...

    def model_image_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) of ``image`` as the model will see it: the frame of its resized-pixel boxes, known
        before a question that brings the image in is asked (so its box grammar can be bounded)."""
        ...

    def answer(self, history: list[Turn], question: Turn, max_new_tokens: int,
               constraint: AnswerConstraint | None = None) -> Generation:
        """Answer ``question`` given ``history`` (alternating user/assistant turns; system prompt is the model's).

        Implementations reuse the KV cache of the longest previously computed prefix of ``history``. With a
        ``constraint`` (closed questions) the answer is decoded so that it follows the constraint's grammar.
        """
        ...
