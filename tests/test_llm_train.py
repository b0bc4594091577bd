"""Training the encoder + LoRA, the length curriculum and safetensors checkpoints (tomesd.llm.train)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.llm_models import tiny_qwen
from tomesd.llm import KTokenEncoder, compress_prompt
from tomesd.llm.compress import IGNORE_INDEX
from tomesd.llm.task import build_tree_tokenizer, tree_examples, with_reconstruction
from tomesd.llm.train import (
    LengthCurriculum,
    StageOptions,
    add_lora,
    answer_loss,
    encode_training_batch,
    load_checkpoint,
    save_checkpoint,
    train,
)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tree_tokenizer()


def test_labels_cover_the_answer_and_eos_only(tokenizer):
    examples = tree_examples(2, 3, 6, seed=0)
    batch = encode_training_batch(tokenizer, examples)
    for row, example in enumerate(examples):
        labelled = batch["tail_labels"][row][batch["tail_labels"][row] != IGNORE_INDEX].tolist()
        assert labelled == [tokenizer.convert_tokens_to_ids(example.answer), tokenizer.eos_token_id]
        real_tail = batch["tail_ids"][row][batch["tail_mask"][row].bool()].tolist()
        assert tokenizer.decode(real_tail[:-2]) == example.question


def test_follow_up_questions_are_labelled_like_the_first(tokenizer):
    examples = tree_examples(3, 5, 8, seed=2, questions=3)
    batch = encode_training_batch(tokenizer, examples)
    for row, example in enumerate(examples):
        assert len(example.turns()) == 3
        expected_tail, expected_labels = [], []
        for question, answer in example.turns():  # "question answer <eos>", labelled on "answer <eos>"
            question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
            answer_ids = [tokenizer.convert_tokens_to_ids(answer), tokenizer.eos_token_id]
            expected_tail += question_ids + answer_ids
            expected_labels += [IGNORE_INDEX] * len(question_ids) + answer_ids
        real = batch["tail_mask"][row].bool()
        assert batch["tail_ids"][row][real].tolist() == expected_tail
        assert batch["tail_labels"][row][real].tolist() == expected_labels


def test_a_reconstruction_turn_labels_every_context_token(tokenizer):
    example = with_reconstruction(tree_examples(1, 4, 6, seed=3, questions=2)[0])
    batch = encode_training_batch(tokenizer, [example])
    labelled = batch["tail_labels"][0][batch["tail_labels"][0] != IGNORE_INDEX].tolist()
    context_ids = tokenizer(example.context, add_special_tokens=False)["input_ids"]
    lookups = [tokenizer.convert_tokens_to_ids(answer) for _, answer in example.turns()[:-1]]
    assert labelled == [token for answer in lookups for token in (answer, tokenizer.eos_token_id)] + context_ids + [
        tokenizer.eos_token_id]


def test_answer_loss_is_cross_entropy_on_answer_tokens(tokenizer):
    model = tiny_qwen(vocab=len(tokenizer))
    examples = tree_examples(3, 3, 7, seed=1)
    batch = encode_training_batch(tokenizer, examples)
    with torch.no_grad():
        loss = answer_loss(model, batch, 1)
        losses = []
        for e in examples:  # uncompressed, one example at a time, no padding
            ids = tokenizer(f"{e.context} {e.question} {e.answer}", return_tensors="pt")["input_ids"]
            ids = torch.cat([ids, torch.tensor([[tokenizer.eos_token_id]])], 1)
            logits = model(ids).logits[0]  # (N, V)
            losses.append(torch.nn.functional.cross_entropy(logits[-3:-1], ids[0, -2:], reduction="none"))
    torch.testing.assert_close(loss, torch.cat(losses).mean(), atol=1e-5, rtol=1e-5)


def test_curriculum_admits_longer_contexts_over_time():
    examples = list(range(10))
    lengths = [5, 50, 10, 45, 15, 40, 20, 35, 25, 30]
    curriculum = LengthCurriculum(examples, lengths, start_length=12, ramp_steps=100, seed=0)
    early = curriculum.batch(0, 64)
    assert set(early) == {0, 2}  # lengths 5 and 10 only
    assert curriculum.max_length(50) == 31
    assert set(curriculum.batch(100, 400)) == set(examples)
    assert LengthCurriculum(examples, lengths, 12, 0).max_length(0) == 50  # no curriculum


def test_lora_and_encoder_training_lowers_the_loss_and_freezes_the_base(tokenizer):
    # A wider init than 0.02: the frozen random LM head must be able to express a confident answer.
    model = tiny_qwen(vocab=len(tokenizer), init_range=0.2)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    encoder = KTokenEncoder(model.config.hidden_size, 4)
    model = add_lora(model, rank=4, alpha=8)
    examples = tree_examples(8, 4, 6, seed=2)
    curriculum = LengthCurriculum(examples, [len(e.context.split()) for e in examples], 100, 0)
    batch = encode_training_batch(tokenizer, examples)
    with torch.no_grad():
        before = answer_loss(model, batch, 4, encoder).item()
    losses = train(model, tokenizer, curriculum, 4, steps=30, batch_size=8, lr=1e-2, encoder=encoder, warmup_steps=2)
    with torch.no_grad():
        after = answer_loss(model, batch, 4, encoder).item()
    assert len(losses) == 30 and after < 0.3 * before
    assert encoder.down.weight.abs().sum() > 0  # the encoder left the exact-mean start
    for name, param in model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")]), name


def test_checkpoint_round_trip(tmp_path, tokenizer):
    model = tiny_qwen(vocab=len(tokenizer))
    encoder = KTokenEncoder(model.config.hidden_size, 4)
    model = add_lora(model, rank=4, alpha=8)
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: make every trainable weight non-trivial
        for p in [*encoder.parameters(), *(p for p in model.parameters() if p.requires_grad)]:
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(tmp_path, encoder, model)
    assert (tmp_path / "encoder.safetensors").is_file()
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()

    loaded_encoder, loaded_model = load_checkpoint(tmp_path, tiny_qwen(vocab=len(tokenizer)))
    batch = encode_training_batch(tokenizer, tree_examples(2, 4, 6, seed=3))
    model.eval()
    logits = []
    with torch.no_grad():
        for lm, enc in ((model, encoder), (loaded_model, loaded_encoder)):
            prompt = compress_prompt(lm, batch["input_ids"], 4, batch["attention_mask"], batch["tail_ids"],
                                     batch["tail_mask"], encoder=enc)
            logits.append(lm(inputs_embeds=prompt.inputs_embeds, attention_mask=prompt.attention_mask,
                             position_ids=prompt.position_ids).logits)
    assert torch.equal(logits[0], logits[1])
    assert loaded_encoder.config() == encoder.config()


def test_checkpoint_for_another_hidden_size_is_rejected(tmp_path, tokenizer):
    save_checkpoint(tmp_path, KTokenEncoder(48, 4))
    with pytest.raises(ValueError, match="hidden size 48 does not match the model's embedding size 32"):
        load_checkpoint(tmp_path, tiny_qwen(vocab=len(tokenizer)))
    with pytest.raises(FileNotFoundError, match="no K-token encoder checkpoint"):
        load_checkpoint(tmp_path / "missing", tiny_qwen(vocab=len(tokenizer)))


def _resumable_setup(tokenizer):
    model = add_lora(tiny_qwen(vocab=len(tokenizer), init_range=0.2), rank=4, alpha=8)
    encoder = KTokenEncoder(model.config.hidden_size, 2)
    examples = tree_examples(16, 3, 6, seed=4)
    curriculum = LengthCurriculum(examples, [len(e.context.split()) for e in examples], 12, 4, seed=3)
    return model, encoder, curriculum


def _trained(model, encoder):
    return {n: p.detach().clone() for n, p in [*model.named_parameters(), *encoder.named_parameters()] if p.requires_grad}


def test_a_resumed_run_equals_one_run_straight_through(tmp_path, tokenizer):
    """Exact: stopped after 3 steps, then after 2 more, then finished, it takes the very steps of one run."""
    options = dict(k=2, steps=8, batch_size=4, lr=1e-2, warmup_steps=2)
    torch.manual_seed(0)
    model, encoder, curriculum = _resumable_setup(tokenizer)
    straight = train(model, tokenizer, curriculum, encoder=encoder, **options)
    expected = _trained(model, encoder)

    torch.manual_seed(0)
    model, encoder, curriculum = _resumable_setup(tokenizer)
    assert len(train(model, tokenizer, curriculum, encoder=encoder, resume_dir=tmp_path, stop_after=3, **options)) == 3
    for stop_after, done in ((2, 5), (None, 8)):  # each time a fresh process would build everything anew
        torch.manual_seed(0)
        model, encoder, curriculum = _resumable_setup(tokenizer)
        resumed = train(model, tokenizer, curriculum, encoder=encoder, resume_dir=tmp_path, stop_after=stop_after,
                        **options)
        assert len(resumed) == done
    assert resumed == straight
    got = _trained(model, encoder)
    assert got.keys() == expected.keys() and all(torch.equal(got[n], expected[n]) for n in got)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_state.pt"]  # no temporary left


def test_a_saved_state_of_another_run_is_refused(tmp_path, tokenizer):
    model, encoder, curriculum = _resumable_setup(tokenizer)
    train(model, tokenizer, curriculum, 2, steps=4, batch_size=2, encoder=encoder, resume_dir=tmp_path, stop_after=1)
    model, encoder, curriculum = _resumable_setup(tokenizer)
    with pytest.raises(ValueError, match="holds a run with k=2, steps=4 .* not k=2, steps=6 .*another resume directory"):
        train(model, tokenizer, curriculum, 2, steps=6, batch_size=2, encoder=encoder, resume_dir=tmp_path)


def test_bf16_autocast_trains(tokenizer):
    model, encoder, curriculum = _resumable_setup(tokenizer)
    losses = train(model, tokenizer, curriculum, 2, steps=3, batch_size=2, encoder=encoder, warmup_steps=1,
                   autocast_dtype=torch.bfloat16)
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)


@pytest.mark.parametrize("change, match", [
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"lr": 0.0}, "lr > 0"),
    ({"warmup_steps": -1}, "warmup_steps >= 0"),
    ({"encoder_lr": 0.0}, "encoder_lr must be > 0"),
    ({"curriculum": 1.5}, "curriculum is a share of the steps"),
])
def test_stage_options_are_checked(change, match):
    with pytest.raises(ValueError, match=match):
        StageOptions(**change)


def test_stage_options_give_the_scripts_their_flags():
    import argparse

    parser = argparse.ArgumentParser()
    StageOptions.add_arguments(parser)
    assert StageOptions.from_args(parser.parse_args([])) == StageOptions()
    options = StageOptions.from_args(parser.parse_args(["--steps", "7", "--bf16"]), answer_eos=False)
    assert (options.steps, options.autocast_dtype, options.answer_eos) == (7, torch.bfloat16, False)
    assert StageOptions.deadline(parser.parse_args([])) is None
    options = StageOptions.from_args(parser.parse_args(["--encoder-lr", "3e-3", "--curriculum", "0.25"]))
    assert (options.encoder_lr, options.curriculum) == (3e-3, 0.25)


def test_encoder_learning_rate_applies_to_the_encoder_only(tokenizer):
    """With ``encoder_lr`` the encoder's first AdamW step is that much larger than the adapters' (Adam's first
    step moves every weight by about its learning rate, whatever the gradient's scale)."""
    model, encoder, curriculum = _resumable_setup(tokenizer)
    before = {n: p.detach().clone() for n, p in [*model.named_parameters(), *encoder.named_parameters()]
              if p.requires_grad}
    train(model, tokenizer, curriculum, 2, steps=1, batch_size=2, lr=1e-4, encoder=encoder, warmup_steps=0,
          encoder_lr=1e-2)
    moved = {n: (p.detach() - before[n]).abs().max().item()
             for n, p in [*model.named_parameters(), *encoder.named_parameters()] if n in before}
    assert max(v for n, v in moved.items() if "lora" in n) <= 1.01e-4
    assert moved["down.weight"] > 5e-3  # the encoder's output layer took the 1e-2 step


def test_a_stage_refuses_an_initial_adapter_folder_that_holds_none(tokenizer, tmp_path):
    from tomesd.llm.train import train_stage

    model = tiny_qwen(vocab=len(tokenizer))
    options = StageOptions(steps=1, init_adapter=str(tmp_path))
    with pytest.raises(ValueError, match="no adapter_config.json there"):
        train_stage(model, tokenizer, tree_examples(8, 3, 4, seed=0), 2, tmp_path / "k2", options)
    assert not (tmp_path / "k2").exists() and not hasattr(model, "peft_config")
