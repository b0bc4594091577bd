"""Generation from a compressed prefix through the model's own generate (tomesd.llm.generate)."""

from __future__ import annotations

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from tests.llm_models import padded_batch, tiny_gemma3, tiny_llama, tiny_qwen, tree_tokenizer_with_bos
from tomesd.llm import compress_prompt, generate_compressed, generate_text
from tomesd.llm.task import build_tree_tokenizer, tree_examples
from tomesd.llm.tokens import chat_parts, tokenize_prompts

GREEDY = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)


@pytest.mark.parametrize("make_model", [tiny_qwen, tiny_llama, tiny_gemma3])
def test_k1_matches_plain_generate_and_returns_new_tokens_only(make_model):
    """Exact. For Gemma-3 this also shows that ``get_input_embeddings()`` gives what its forward expects as
    ``inputs_embeds`` (the sqrt(hidden) scale is inside the embedding module), and that sliding-window layers
    (window 4, prompts of 12) take the compressed prefix's mask and positions like token ids."""
    model = make_model()
    ids, mask = padded_batch([12, 7], "left")
    new = generate_compressed(model, ids, 1, mask, **GREEDY)
    plain = model.generate(input_ids=ids, attention_mask=mask, **GREEDY)  # (B, N + 6): prompt, then new
    assert new.shape == (2, 6)
    assert torch.equal(new, plain[:, ids.shape[1] :])


def test_compressed_generation_matches_a_manual_greedy_loop():
    """generate's cache and positions continue the compressed prefix correctly, row by row."""
    model = tiny_qwen()
    ids, mask = padded_batch([14, 9], "right")
    tail, tail_mask = padded_batch([3, 2], "right", seed=1)
    new = generate_compressed(model, ids, 4, mask, tail, tail_mask, **GREEDY)
    assert new.shape == (2, 6)
    embedding = model.get_input_embeddings()
    for row in range(2):
        prompt = compress_prompt(model, ids[row : row + 1, mask[row].bool()], 4,
                                 tail_ids=tail[row : row + 1, tail_mask[row].bool()])
        embeds, expected = prompt.inputs_embeds, []
        with torch.no_grad():
            for _ in range(6):  # no cache: recompute the whole sequence every step
                token = model(inputs_embeds=embeds).logits[:, -1].argmax(-1)  # (1,)
                expected.append(token.item())
                embeds = torch.cat([embeds, embedding(token)[:, None]], 1)
        assert new[row].tolist() == expected


def test_generate_text_decodes_only_the_answer():
    tokenizer = build_tree_tokenizer()
    model = tiny_qwen(vocab=len(tokenizer))
    examples = tree_examples(3, 4, 9, seed=0)
    answers = generate_text(model, tokenizer, [e.context for e in examples], [e.question for e in examples],
                            k=4, max_new_tokens=2, do_sample=False, eos_token_id=None)
    assert len(answers) == 3
    for answer in answers:
        words = answer.split()
        assert 0 < len(words) <= 2  # the 2 new tokens, never the prompt (specials skipped)
    single = generate_text(model, tokenizer, examples[0].context, examples[0].question, k=4, max_new_tokens=2,
                           do_sample=False, eos_token_id=None)
    assert single == answers[:1]  # a prompt alone decodes as in the padded batch


def test_one_question_per_context():
    tokenizer = build_tree_tokenizer()
    model = tiny_qwen(vocab=len(tokenizer))
    with pytest.raises(ValueError, match="2 context\\(s\\) but 1 question"):
        generate_text(model, tokenizer, ["A is the parent of B .", "B is the parent of C ."], ["who ?"], k=2)


def test_tokenizer_without_pad_token():
    """Llama-style tokenizers have no pad token: prompts of different lengths still batch."""
    with_pad = build_tree_tokenizer()
    no_pad = PreTrainedTokenizerFast(tokenizer_object=with_pad.backend_tokenizer, eos_token="[EOS]", unk_token="[UNK]")
    assert no_pad.pad_token is None
    model = tiny_qwen(vocab=len(with_pad))
    examples = tree_examples(2, 3, 9, seed=4)
    args = ([e.context for e in examples], [e.question for e in examples])
    options = dict(k=2, max_new_tokens=2, do_sample=False, eos_token_id=None)
    assert generate_text(model, no_pad, *args, **options) == generate_text(model, with_pad, *args, **options)


def test_empty_question_is_a_clear_error():
    """An empty question used to reach the embedding as float indices (RuntimeError)."""
    tokenizer = build_tree_tokenizer()
    model = tiny_qwen(vocab=len(tokenizer))
    example = tree_examples(1, 4, 6, seed=0)[0]
    with pytest.raises(ValueError, match=r"question 0 \(''\) has no tokens; .*question=None"):
        generate_text(model, tokenizer, example.context, "", k=2, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"question 1 \(''\) has no tokens"):
        generate_text(model, tokenizer, [example.context] * 2, [example.question, ""], k=2, max_new_tokens=1)


def test_empty_context_list_is_a_clear_error():
    tokenizer = build_tree_tokenizer()
    model = tiny_qwen(vocab=len(tokenizer))
    with pytest.raises(ValueError, match="no context given: pass a string or a non-empty list"):
        generate_text(model, tokenizer, [], k=2)
    with pytest.raises(ValueError, match="no context given"):
        generate_text(model, tokenizer, [], [], k=2)


def test_empty_context_string_is_a_clear_error():
    """The tree tokenizer adds no BOS, so "" has no token at all: the error says to pass a non-empty one."""
    tokenizer = build_tree_tokenizer()
    model = tiny_qwen(vocab=len(tokenizer))
    with pytest.raises(ValueError, match="prompt 1 has no real token .* pass a non-empty context"):
        generate_text(model, tokenizer, ["A is the parent of B .", ""], ["who ?", "who ?"], k=1)


@pytest.mark.parametrize("make_model", [tiny_qwen, tiny_gemma3])
def test_bos_is_kept_alone_before_the_merged_context(make_model):
    """The tokenizer's BOS is never averaged into the first block: the prompt starts with its exact embedding."""
    tokenizer = tree_tokenizer_with_bos()
    model = make_model(vocab=len(tokenizer))
    examples = tree_examples(2, 4, 6, seed=1)
    contexts, questions = [e.context for e in examples], [e.question for e in examples]
    encoded = tokenize_prompts(tokenizer, contexts, questions)
    assert encoded["head_ids"].tolist() == [[tokenizer.bos_token_id]]
    assert tokenizer.bos_token_id not in encoded["input_ids"].tolist()[0]
    lengths = encoded["attention_mask"].sum(1).tolist()
    assert lengths == [len(c.split()) for c in contexts]  # the context alone, one token per word
    prompt = compress_prompt(model, encoded["input_ids"], 4, encoded["attention_mask"], encoded["tail_ids"],
                             encoded["tail_mask"], head_ids=encoded["head_ids"], padding_side="right")
    bos = model.get_input_embeddings()(torch.tensor([tokenizer.bos_token_id]))[0]
    assert torch.equal(prompt.inputs_embeds[:, 0], bos.expand(2, -1))
    tail_lengths = encoded["tail_mask"].sum(1)
    expected = [1 + -(-n // 4) + int(t) for n, t in zip(lengths, tail_lengths)]
    assert prompt.attention_mask.sum(1).tolist() == expected
    with_head = generate_text(model, tokenizer, contexts, questions, k=4, max_new_tokens=2, do_sample=False,
                              eos_token_id=None)
    alone = [generate_text(model, tokenizer, c, q, k=4, max_new_tokens=2, do_sample=False, eos_token_id=None)[0]
             for c, q in zip(contexts, questions)]
    assert with_head == alone


def test_head_text_is_kept_after_the_bos():
    tokenizer = tree_tokenizer_with_bos()
    encoded = tokenize_prompts(tokenizer, ["A is the parent of B ."], head="who is")
    assert encoded["head_ids"].tolist() == [[tokenizer.bos_token_id, *tokenizer("who is", add_special_tokens=False)["input_ids"]]]
    assert "head_ids" not in tokenize_prompts(build_tree_tokenizer(), ["A is the parent of B ."])


def test_chat_parts_wrap_the_document_in_the_template():
    tokenizer = tree_tokenizer_with_bos()
    assert chat_parts(tokenizer, "who ?") == (None, "\nwho ?\nAnswer:")  # no template: plain text
    tokenizer.chat_template = "[BOS]<u>{% for m in messages %}{{ m['content'] }}{% endfor %}</u>{% if add_generation_prompt %}<a>{% endif %}"
    assert chat_parts(tokenizer, "who ?") == ("<u>", "\nwho ?</u><a>")  # its BOS left to the special prefix
