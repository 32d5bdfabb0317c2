"""The contract between the stage flow and a vision-language model.

The flow (``inference.flow``) walks the stages as one growing conversation and asks a ``ChatModel`` for each
answer. The model implementation (``inference.engine``) owns prompt formatting, image tokens, decoding and the
prefix KV cache: since the history only ever grows by the last question and answer, it reuses the computed
prefix for the next question. The flow never sees tokens or tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal, Protocol

from PIL import Image

if TYPE_CHECKING:
    from inference.constraints import AnswerConstraint

IMAGE_PLACEHOLDER = "<image>"  # where an image enters a user turn's text (CXRTrek wording)


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


class ChatModel(Protocol):
    """A loaded vision-language model that answers the next user turn of a conversation."""

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
