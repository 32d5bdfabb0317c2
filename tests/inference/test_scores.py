"""Choice scores (inference.scores): real probabilities over a closed answer's choices, the same on every backend.

A scripted model with known logits (a real tiny Qwen2.5-VL whose output layer is replaced by a constant: every
position's logits are the same chosen vector) gives the scores the formula gives by hand; the tiny demo models'
scores from the prompt cache equal a full recompute of prompt + choice; the engine's ``prompt_logprobs`` responses
are read into the same numbers (the real-engine comparison is in test_remote_engine.py)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from inference.chat import Turn
from inference.constraints import NO_HEAD, YES_HEAD, constraint_for
from inference.model import load_chat_model
from inference.model.remote import ChoicesUnscored, choice_logprobs
from inference.record import ParsedAnswer, QType
from inference.scores import answer_probability, best_choice, normalise, presence_probability, shared_prefix

SEVERITY = ["Mild", "Moderate", "Severe"]


def _conversation() -> tuple[list[Turn], Turn]:
    image = Image.new("L", (300, 360), 70)
    first = Turn("user", "Here is the current X-ray image: <image> . Which view is the X-ray image?", (image,))
    return [first, Turn("assistant", "PA view.")], Turn("user", "Is there any evidence of pneumothorax?")


def test_normalise_gives_probabilities_that_sum_to_one() -> None:
    scores = normalise({"a": math.log(0.2), "b": math.log(0.6), "c": math.log(0.2)})
    assert scores == pytest.approx({"a": 0.2, "b": 0.6, "c": 0.2}, abs=1e-12)
    tiny = normalise({"a": -2000.0, "b": -2000.0 - math.log(3)})  # far below float's smallest exp(): no underflow
    assert tiny == pytest.approx({"a": 0.75, "b": 0.25}) and sum(tiny.values()) == pytest.approx(1.0, abs=1e-12)
    assert normalise({"a": 0.0, "b": -math.inf}) == {"a": 1.0, "b": 0.0}
    assert normalise({}) == {}
    with pytest.raises(ValueError):
        normalise({"a": -math.inf})


def test_best_choice_breaks_ties_by_order_and_shared_prefix_counts_common_tokens() -> None:
    assert best_choice({"No.": 0.5, "Yes.": 0.5}, ("Yes.", "No.")) == "Yes."
    assert best_choice({"No.": 0.51, "Yes.": 0.49}, ("Yes.", "No.")) == "No."
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert shared_prefix([[1, 2], [1, 2]]) == 2 and shared_prefix([]) == 0


def test_presence_and_answer_probability() -> None:
    scores = {YES_HEAD: 0.8, NO_HEAD: 0.2}
    assert presence_probability(scores) == 0.8 and presence_probability({}) is None
    no = ParsedAnswer(ok=True, yes_no=False)
    assert answer_probability(scores, QType.YES_NO, no, "No. Nothing.") == 0.2
    assert answer_probability({"A. Mild.": 0.7, "B. Moderate.": 0.3}, QType.SINGLE_CHOICE,
                              ParsedAnswer(ok=True, choices=["Mild"]), " A. Mild. ") == 0.7
    assert answer_probability({}, QType.YES_NO, no, "No.") is None


def _response(ids: list[int], logprobs: list[float | None]) -> dict:
    return {"prompt_token_ids": ids,
            "prompt_logprobs": [None if lp is None else {str(t): {"logprob": lp, "rank": 1}}
                                for t, lp in zip(ids, logprobs, strict=True)]}


def test_engine_prompt_logprobs_are_read_past_the_shared_prompt() -> None:
    """Prompt [7, 8] then the choice: "Yes." = [400, 20], "No." = [52, 85, 20]; the shared prompt's tokens are left
    out, each choice's own tokens summed."""
    yes = _response([7, 8, 400, 20], [None, -1.0, -2.0, -0.5])
    no = _response([7, 8, 52, 85, 20], [None, -1.0, -1.0, -3.0, -0.25])
    scores, tails = choice_logprobs((YES_HEAD, NO_HEAD), [yes, no])
    expected = normalise({YES_HEAD: -2.5, NO_HEAD: -4.25})
    assert scores == pytest.approx(expected, abs=1e-12) and sum(scores.values()) == pytest.approx(1.0)
    assert tails == {YES_HEAD: [400, 20], NO_HEAD: [52, 85, 20]}
    # choices that start alike: their common token cancels out, whichever way it is counted
    same = choice_logprobs(("A. x", "A. y"), [_response([7, 39, 20, 5], [None, -1.0, -0.1, -2.0]),
                                              _response([7, 39, 20, 6], [None, -1.0, -0.1, -1.0])])[0]
    assert same == pytest.approx(normalise({"A. x": -2.0, "A. y": -1.0}))


def test_engine_responses_without_prompt_logprobs_are_refused() -> None:
    with pytest.raises(ChoicesUnscored, match="no prompt_logprobs"):
        choice_logprobs((YES_HEAD, NO_HEAD), [{"prompt_token_ids": [1, 2]}, _response([1, 3], [None, -1.0])])
    with pytest.raises(ChoicesUnscored, match="lack token"):
        choice_logprobs((YES_HEAD, NO_HEAD), [_response([1, 2], [None, -1.0]),
                                              {"prompt_token_ids": [1, 3], "prompt_logprobs": [None, {"9": {}}]}])


@pytest.fixture(scope="module")
def scripted(qwen_demo_dir: Path):
    """The tiny Qwen2.5-VL with logits fixed to one vector at every position: the output layer's weights are zero,
    its bias is the vector (set by each test)."""
    model = load_chat_model(qwen_demo_dir, quantization="none", dtype="float32")
    head = model.model.lm_head
    constant = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    torch.nn.init.zeros_(constant.weight)
    torch.nn.init.zeros_(constant.bias)
    model.model.lm_head = constant
    return model


def _set_logits(model, values: dict[int, float]) -> torch.Tensor:
    bias = torch.zeros(model.model.lm_head.out_features)
    for token, value in values.items():
        bias[token] = value
    with torch.no_grad():
        model.model.lm_head.bias.copy_(bias)
    return bias


def _by_hand(bias: torch.Tensor, tokens: dict[str, list[int]]) -> dict[str, float]:
    """Every token's log-probability is its logit minus log Z, whatever came before it."""
    log_z = float(torch.logsumexp(bias, 0))
    return normalise({choice: sum(float(bias[t]) for t in ids) - len(ids) * log_z for choice, ids in tokens.items()})


def test_a_model_with_known_logits_gives_known_scores(scripted) -> None:
    history, question = _conversation()
    tokens = scripted.choice_tokens("<|im_start|>assistant\n", (YES_HEAD, NO_HEAD))
    bias = _set_logits(scripted, {tokens[NO_HEAD][0]: 3.0, tokens[YES_HEAD][0]: 2.0, tokens[YES_HEAD][-1]: 0.5})
    generation = scripted.answer(history, question, 8, constraint_for(QType.YES_NO))
    expected = _by_hand(bias, tokens)
    assert tokens[YES_HEAD][1:] == tokens[NO_HEAD][1:]  # "Yes" "." and "No" ".": P(Yes.) = sigmoid(2 - 3)
    assert expected[YES_HEAD] == pytest.approx(1 / (1 + math.e), abs=1e-9)
    assert generation.choice_probabilities == pytest.approx(expected, abs=1e-6)
    assert sum(generation.choice_probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert generation.text.startswith(NO_HEAD)


def test_the_answer_is_the_most_probable_whole_choice_not_the_likeliest_first_token(scripted) -> None:
    """"B" has the largest logit of all, so greedy decoding under the grammar would write "B. Moderate.", but the
    rest of that option is unlikely: "A. Mild." is the more probable answer, and the one given."""
    constraint = constraint_for(QType.SINGLE_CHOICE, SEVERITY)
    tokens = scripted.choice_tokens("<|im_start|>assistant\n", constraint.choices)
    unlikely = set(tokens["B. Moderate."][3:]) - set(tokens["A. Mild."]) - set(tokens["C. Severe."])
    bias = _set_logits(scripted, {tokens["B. Moderate."][0]: 4.0, **dict.fromkeys(unlikely, -3.0)})
    history, _ = _conversation()
    generation = scripted.answer(history, Turn("user", "How severe? [ A. Mild; B. Moderate; C. Severe ]."), 24,
                                 constraint)
    expected = _by_hand(bias, tokens)
    assert int(bias.argmax()) == tokens["B. Moderate."][0]
    assert generation.choice_probabilities == pytest.approx(expected, abs=1e-6)
    assert generation.text == max(expected, key=lambda c: expected[c]) != "B. Moderate."
    assert set(generation.choice_probabilities) == set(constraint.choices)


def _full_recompute(model, history: list[Turn], question: Turn, choices: tuple[str, ...]) -> dict[str, float]:
    """Each choice's probability from one forward pass over the whole prompt + choice (no cache)."""
    messages, images = model._messages([*history, question])
    text = model.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt = model.processor(text=[text], images=images or None, return_tensors="pt")["input_ids"][0].tolist()
    logprobs = {}
    for choice in choices:
        inputs = model.processor(text=[text + choice], images=images or None, return_tensors="pt")
        ids = inputs["input_ids"][0].tolist()
        assert ids[:len(prompt)] == prompt
        with torch.inference_mode():
            out = model.model(**inputs)
        steps = torch.log_softmax(out.logits[0].float(), -1)
        logprobs[choice] = sum(float(steps[i - 1, ids[i]]) for i in range(len(prompt), len(ids)))
    return normalise(logprobs)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava"])
def test_scores_from_the_prompt_cache_equal_a_full_recompute(family: str, demo_model_dirs: dict[str, Path]) -> None:
    """mrope (Qwen) and 1-D (Llava) positions; the second question reuses the first one's cached prefix."""
    model = load_chat_model(demo_model_dirs[family], quantization="none", dtype="float32", cache="prefix")
    history, question = _conversation()
    model.answer([], history[0], 4)  # fills the prefix cache
    for constraint, turn in ((constraint_for(QType.YES_NO), question),
                             (constraint_for(QType.SINGLE_CHOICE, SEVERITY), Turn("user", "How severe is it?"))):
        generation = model.answer(history, turn, 6, constraint)
        assert generation.cached_tokens > 0
        expected = _full_recompute(model, history, turn, constraint.scored)
        assert generation.choice_probabilities == pytest.approx(expected, abs=1e-5)
        assert sum(generation.choice_probabilities.values()) == pytest.approx(1.0, abs=1e-4)
        best = max(expected, key=lambda c: expected[c])
        assert generation.text.startswith(best)


def test_multi_choice_and_boxes_are_not_scored(qwen_demo_dir: Path) -> None:
    model = load_chat_model(qwen_demo_dir, quantization="none", dtype="float32")
    history, _ = _conversation()
    multi = model.answer(history, Turn("user", "Which? [ A. x; B. y ]."), 12,
                         constraint_for(QType.MULTI_CHOICE, ["x", "y"]))
    assert multi.choice_probabilities == {} and multi.text
