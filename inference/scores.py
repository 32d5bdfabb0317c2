"""The probability of each allowed choice of a closed answer, the same on every backend.

A choice (``Yes.``, ``No.``, ``A. Mild.``) is a token sequence appended to the prompt, tokenized as the prompt and
the choice are tokenized together. Its score is the model's probability of that whole sequence, the product of its
tokens' conditional probabilities (each token given the prompt and the choice's earlier tokens, from the raw logits:
no grammar mask), normalised over the allowed choices:

    P(c) = exp(log p(c | prompt)) / sum over c' of exp(log p(c' | prompt))

so the scores of a question sum to 1, and P(c) is the model's probability of c given that it answers with one of
the choices. Tokens that every choice shares at its start (after the same prompt) have the same probabilities in
every choice and cancel out, so a backend that cannot tell where the prompt ends may count them or not. Other
tokenizations of the same text are not counted (with byte-level vocabularies they are possible but rare in a
trained model). The answer is the most probable choice (exact over the list, where greedy token-by-token decoding
can commit to a first token whose continuations are unlikely); for a yes/no answer only its head is chosen so, the
justification after it is decoded freely.

Backends: the local one (``inference.model.engine``) runs the choices' tokens on its prompt cache; a vLLM engine
(``inference.model.remote``) returns them as ``prompt_logprobs`` of one request per choice.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from inference.constraints import NO_HEAD, YES_HEAD
from inference.record import ParsedAnswer, QType

__all__ = ["answer_probability", "best_choice", "normalise", "presence_probability", "shared_prefix"]


def normalise(logprobs: Mapping[str, float]) -> dict[str, float]:
    """Choice -> probability from choice -> log-probability of its tokens (log-sum-exp, so very small sequence
    probabilities do not underflow). Empty in, empty out; a choice at -inf gets 0."""
    if not logprobs:
        return {}
    top = max(logprobs.values())
    if top == -math.inf:
        raise ValueError("every choice has probability 0")
    weights = {choice: math.exp(value - top) for choice, value in logprobs.items()}
    total = sum(weights.values())
    return {choice: weight / total for choice, weight in weights.items()}


def best_choice(probabilities: Mapping[str, float], order: Sequence[str]) -> str:
    """The most probable choice; a tie goes to the one listed first in ``order``."""
    return max(order, key=lambda choice: (probabilities[choice], -order.index(choice)))


def shared_prefix(sequences: Sequence[Sequence[int]]) -> int:
    """How many leading items all ``sequences`` have in common."""
    if not sequences:
        return 0
    n = min(len(s) for s in sequences)
    first = sequences[0]
    i = 0
    while i < n and all(s[i] == first[i] for s in sequences):
        i += 1
    return i


def presence_probability(probabilities: Mapping[str, float]) -> float | None:
    """A yes/no question's probability of "yes" (the presence of its finding); None when it was not scored."""
    if YES_HEAD in probabilities and NO_HEAD in probabilities:
        return probabilities[YES_HEAD]
    return None


def answer_probability(probabilities: Mapping[str, float], qtype: QType, parsed: ParsedAnswer,
                       raw_answer: str) -> float | None:
    """The probability of the choice the answer made: its yes/no head, or the option it is; None when the
    answer was not scored or is not one of the scored choices."""
    if not probabilities:
        return None
    if qtype is QType.YES_NO and parsed.yes_no is not None:
        return probabilities.get(YES_HEAD if parsed.yes_no else NO_HEAD)
    return probabilities.get(raw_answer.strip())
