"""ToMe on transformers vision encoders: exactness at r=0 and after removal, token counts, batches, masks,
extra outputs, training, refusals, the space-time matching, the pooling heads and compilation.

Tiny random-weight models from tests/tiny_transformers.py (4 layers, 16 image / 64 video patch tokens).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import tomesd  # noqa: E402
from tomesd.merge import spacetime_order, temporal_soft_matching  # noqa: E402
from tomesd.patch import transformers as tome_hf  # noqa: E402

import tiny_transformers as tiny  # noqa: E402
from sequence_checks import module_attributes, record_sdpa_masks  # noqa: E402

NAMES = list(tiny.MODELS)
TOWERS = ["vit", "deit", "dinov2", "dinov2_registers", "clip_vision", "siglip_vision", "videomae", "vivit"]


def forward(model, name, pixels, **kwargs):
    with torch.no_grad():
        return tiny.main_output(name, tiny.run(model, name, pixels, **kwargs))


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("name", NAMES)
def test_r0_and_removal_are_bit_identical(name, implementation):
    model = tiny.build(name, implementation)
    pixels = tiny.inputs(name)
    before = module_attributes(model)
    reference = forward(model, name, pixels)
    tomesd.apply_patch(model, r=0)
    unmerged = forward(model, name, pixels)
    tomesd.apply_patch(model, r=3)
    merged = forward(model, name, pixels)
    tomesd.remove_patch(model)
    restored = forward(model, name, pixels)
    assert torch.equal(unmerged, reference)
    assert torch.equal(restored, reference)
    assert not torch.equal(merged, reference)
    assert module_attributes(model) == before
    assert not tomesd.is_patched(model)


@pytest.mark.parametrize("name,matching", [(name, "global") for name in TOWERS]
                         + [("videomae", "spacetime"), ("vivit", "spacetime")])
def test_each_layer_removes_r_tokens_and_keeps_the_prefix(name, matching):
    model = tiny.build(name)
    prefix, tokens = tiny.PREFIX[name], tiny.num_tokens(name)
    tomesd.apply_patch(model, r=[3, 2, 2, 1], trace_source=True, matching=matching)
    hidden = forward(model, name, tiny.inputs(name))
    assert hidden.shape == (2, tokens - 8, 32) and torch.isfinite(hidden).all()
    assert tome_hf.protected_tokens(model) == prefix
    source = tome_hf.merge_sources(model)  # (B, N, N0)
    assert source.shape == (2, tokens - 8, tokens)
    # every input token lands in exactly one output token; prefix tokens stay alone, in place
    assert torch.equal(source.sum(dim=1), torch.ones(2, tokens))
    assert torch.equal(source[:, :prefix, :prefix], torch.eye(prefix).expand(2, -1, -1))
    assert torch.equal(source[:, :prefix].sum(-1), torch.ones(2, prefix))


@pytest.mark.parametrize("name", ["vit_classifier", "deit_teacher", "clip", "siglip", "videomae_classifier"])
def test_small_r_stays_close_to_the_unmerged_model(name):
    # merging approximates: on random weights r=1 per layer keeps the outputs' direction (cosine > 0.95);
    # a wrong merge (mixing a class token, unweighted pooling of the wrong tokens) falls far below
    model = tiny.build(name)
    pixels = tiny.inputs(name)
    reference = forward(model, name, pixels)
    tomesd.apply_patch(model, r=1)
    assert F.cosine_similarity(reference, forward(model, name, pixels)).min() > 0.95


@pytest.mark.parametrize("name", ["vit_classifier", "siglip_vision", "videomae_classifier"])
def test_a_batch_merges_each_sample_on_its_own(name):
    # each sample has its own matching: a batch of 3 gives what three batches of 1 give (float tolerance)
    model = tomesd.apply_patch(tiny.build(name), r=2)
    pixels = tiny.inputs(name, batch=3)
    batched = forward(model, name, pixels)
    single = torch.cat([forward(model, name, pixels[i : i + 1]) for i in range(3)])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("name", ["vit", "dinov2", "vivit"])
def test_an_attention_mask_is_refused(name):
    model = tomesd.apply_patch(tiny.build(name), r=2)
    pixels = tiny.inputs(name)
    mask = torch.ones(2, tiny.num_tokens(name), dtype=torch.long)
    mask[:, -1] = 0
    with pytest.raises(ValueError, match="cannot take an attention_mask"):
        forward(model, name, pixels, attention_mask=mask)


def test_hidden_states_and_attentions_follow_the_shrinking_sequence():
    model = tomesd.apply_patch(tiny.build("vit", "eager"), r=[3, 2, 2, 1])
    with torch.no_grad():
        output = model(tiny.inputs("vit"), output_hidden_states=True, output_attentions=True)
    # the embeddings, then each layer's output after its merge
    assert [h.shape[1] for h in output.hidden_states] == [17, 14, 12, 10, 9]
    # attention layer l runs on the tokens that layer l received
    assert [a.shape[-1] for a in output.attentions] == [17, 14, 12, 10]
    assert output.hidden_states[-1].shape == output.last_hidden_state.shape  # before the final layernorm


@pytest.mark.parametrize("name", ["vit_classifier", "dinov2", "clip_projection", "videomae_classifier"])
def test_backward_works_in_training_mode(name):
    model = tomesd.apply_patch(tiny.build(name), r=2).train()
    output = tiny.main_output(name, tiny.run(model, name, tiny.inputs(name)))
    output.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g is not None for g in grads) > 0.9 * len(grads)  # all but unused ones (e.g. a mask token)


def test_proportional_bias_makes_a_merged_token_attend_like_its_copies():
    # attention over [a, b, b] equals attention over [a, b] with log-size bias [0, log 2], through the
    # library's eager and SDPA functions alike: exact up to float rounding
    for implementation in ("eager", "sdpa"):
        model = tiny.build("vit", implementation)
        attention = model.layers[0].attention
        a, b = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
        with torch.no_grad():
            with_copies = attention(torch.cat([a, b, b], dim=1))[0]
            tomesd.apply_patch(model, r=0)
            model._tomesd_transformers.size = torch.tensor([[[1.0], [2.0]]])
            merged = attention(torch.cat([a, b], dim=1))[0]
        assert torch.allclose(merged, with_copies[:, :2], atol=1e-6)


def test_sdpa_stays_in_use_with_the_size_bias(monkeypatch):
    model = tiny.build("vit")
    masks = record_sdpa_masks(monkeypatch)
    tomesd.apply_patch(model, r=2)
    forward(model, "vit", tiny.inputs("vit"))
    assert masks[0] is None  # nothing merged before the first layer
    assert [tuple(mask.shape) for mask in masks[1:]] == [(2, 1, 1, 17 - 2 * layer) for layer in (1, 2, 3)]


def test_siglip_attention_pooling_is_weighted_by_token_size():
    # the pooling probe attending to merged tokens with the log-size bias equals the unpatched head
    # attending to each token repeated by its size (float tolerance)
    model = tiny.build("siglip_vision")
    pixels = tiny.inputs("siglip_vision")
    tomesd.apply_patch(model, r=3, trace_source=True)
    with torch.no_grad():
        output = model(pixels)
        size = tome_hf.merge_sources(model).sum(-1)  # (B, N)
        tomesd.remove_patch(model)
        for sample in range(2):
            copies = output.last_hidden_state[sample].repeat_interleave(size[sample].long(), dim=0)
            expected = model.head(copies.unsqueeze(0))
            assert torch.allclose(output.pooler_output[sample], expected[0], atol=1e-5)


def test_videomae_mean_pooling_is_weighted_by_token_size():
    model = tiny.build("videomae_classifier")
    pixels = tiny.inputs("videomae_classifier")
    tomesd.apply_patch(model, r=4, trace_source=True)
    with torch.no_grad():
        output = model(pixels, output_hidden_states=True)
        size = tome_hf.merge_sources(model).sum(-1, keepdim=True)  # (B, N, 1)
        tokens = output.hidden_states[-1]
        weighted = model.classifier(model.fc_norm.forward((tokens * size).sum(1) / size.sum(1)))  # no hooks
        plain = model.classifier(model.fc_norm.forward(tokens.mean(1)))
    assert torch.allclose(output.logits, weighted, atol=1e-5)
    assert not torch.allclose(output.logits, plain, atol=1e-4)


def test_clip_model_patches_the_vision_tower_only():
    model = tiny.build("clip")
    ids = torch.arange(6).repeat(2, 1)
    with torch.no_grad():
        text = model.get_text_features(input_ids=ids).pooler_output
        tomesd.apply_patch(model, r=3)
        assert torch.equal(model.get_text_features(input_ids=ids).pooler_output, text)
    assert tome_hf.token_grid(model) == (1, 4, 4)


def test_spacetime_matching_merges_a_place_with_itself_in_the_next_frame():
    # one merge in the first layer: each merged pair is one (y, x) in two consecutive tubelet frames
    model = tiny.build("videomae")
    tomesd.apply_patch(model, r=[12, 0, 0, 0], matching="spacetime", trace_source=True)
    forward(model, "videomae", tiny.inputs("videomae"))
    source = tome_hf.merge_sources(model)  # (B, 52, 64)
    groups = source[source.sum(-1) == 2]  # (B * 12, 64)
    assert groups.shape[0] == 24
    members = groups.nonzero()[:, 1].view(-1, 2)  # token index = frame * 16 + row * 4 + col
    frames, places = members // 16, members % 16
    assert torch.equal(places[:, 0], places[:, 1])
    assert torch.equal(frames[:, 1] - frames[:, 0], torch.ones(24, dtype=torch.long))
    assert torch.equal(frames[:, 0] % 2, torch.zeros(24, dtype=torch.long))


def test_global_and_spacetime_matching_both_keep_the_video_embedding():
    # approximations: at r=6 per layer (24 of 64 tokens) the mean-pooled logits keep their direction
    model = tiny.build("videomae_classifier")
    pixels = tiny.inputs("videomae_classifier")
    reference = forward(model, "videomae_classifier", pixels)
    for matching in ("global", "spacetime"):
        tomesd.apply_patch(model, r=6, matching=matching)
        merged = forward(model, "videomae_classifier", pixels)
        assert F.cosine_similarity(reference, merged).min() > 0.95, matching


def test_spacetime_order_sorts_by_place_then_frame_behind_the_prefix():
    positions = torch.tensor([[[0, 0, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0], [0.5, 0, 0]]]).float()  # (1, 5, 3)
    assert spacetime_order(positions, protected=1).tolist() == [[0, 4, 3, 2, 1]]


def test_temporal_matching_pairs_each_candidate_with_the_next_token():
    # tokens 0-1 and 4-5 are identical pairs; 2-3 are orthogonal: r=2 merges exactly 0-1 and 4-5
    metric = torch.eye(6)[[0, 0, 2, 3, 4, 4]].unsqueeze(0)  # (1, 6, 6)
    plan = temporal_soft_matching(metric, r=2)
    assert sorted(plan.src_idx[plan.merged[0]].tolist()) == [0, 4]
    assert plan.dst_idx[plan.target[0]].tolist() == [t + 1 for t in plan.src_idx[plan.merged[0]].tolist()]
    odd = temporal_soft_matching(torch.randn(1, 5, 4), r=3)  # the last candidate joins the one before
    assert odd.r == 3 and odd.num_merged_tokens == 2


@pytest.mark.parametrize("name,matching", [("vit", "global"), ("videomae", "spacetime"), ("siglip_vision", "global")])
def test_compiled_fullgraph_matches_eager(name, matching):
    model = tomesd.apply_patch(tiny.build(name), r=2, matching=matching)
    pixels = tiny.inputs(name)
    expected = forward(model, name, pixels)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.allclose(forward(compiled, name, pixels), expected, atol=1e-6)


def test_set_r_changes_the_schedule_and_checks_it():
    model = tomesd.apply_patch(tiny.build("vit"), r=1)
    tome_hf.set_r(model, 2)
    assert forward(model, "vit", tiny.inputs("vit")).shape[1] == 17 - 8
    assert model._tomesd.options["r"] == 2
    with pytest.raises(ValueError, match="largest constant r"):
        tome_hf.set_r(model, 6)
    with pytest.raises(ValueError, match="not patched"):
        tome_hf.set_r(tiny.build("vit"), 1)


@pytest.mark.parametrize("options,error,match", [
    ({"r": -1}, ValueError, "r must be >= 0"),
    ({"r": "8"}, TypeError, "r must be an int"),
    ({"r": [1, 1]}, ValueError, "one value per layer"),
    ({"r": 9}, ValueError, "largest constant r"),
    ({"matching": "local"}, ValueError, "matching must be one of"),
    ({"proportional_attention": 1}, TypeError, "proportional_attention must be True or False"),
    ({"ratio": 0.5}, TypeError, "unknown option"),
    ({"matching": "spacetime"}, ValueError, "needs a video model"),
])
def test_bad_options_are_refused_and_leave_the_model_unpatched(options, error, match):
    model = tiny.build("vit")
    before = module_attributes(model)
    with pytest.raises(error, match=match):
        tomesd.apply_patch(model, **options)
    assert module_attributes(model) == before and not tomesd.is_patched(model)


def test_unsupported_setups_are_refused_at_apply_time():
    timesformer = transformers.TimesformerModel(transformers.TimesformerConfig(
        **tiny.WIDTH, image_size=32, patch_size=8, num_frames=4))
    with pytest.raises(ValueError, match="TimesformerModel cannot be token-merged: its divided space-time"):
        tomesd.apply_patch(timesformer, r=2)
    flex = tiny.build("vit")
    flex.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="'eager' and 'sdpa'"):
        tomesd.apply_patch(flex, r=2)
    checkpointed = tiny.build("vit")
    # transformers 5.x renamed gradient checkpointing to activation checkpointing
    (getattr(checkpointed, "activation_checkpointing_enable", None) or checkpointed.gradient_checkpointing_enable)()
    with pytest.raises(ValueError, match="activation \\(gradient\\) checkpointing"):
        tomesd.apply_patch(checkpointed, r=2)
    first_token = tiny.build("videomae_classifier", use_mean_pooling=False)
    with pytest.raises(ValueError, match="use_mean_pooling=False"):
        tomesd.apply_patch(first_token, r=2)
    with pytest.raises(TypeError, match="transformers vision encoder"):
        tomesd.apply_patch(transformers.BertModel(transformers.BertConfig(**tiny.WIDTH)))


def test_spacetime_matching_refuses_masked_tubelets_at_run_time():
    model = tomesd.apply_patch(tiny.build("videomae"), r=2, matching="spacetime")
    masked = torch.zeros(2, 64, dtype=torch.bool)
    masked[:, :16] = True
    with pytest.raises(ValueError, match="cannot take bool_masked_pos"):
        with torch.no_grad():
            model(tiny.inputs("videomae"), bool_masked_pos=masked)
    tomesd.apply_patch(model, r=2)  # global matching takes the 48 visible tokens
    with torch.no_grad():
        assert model(tiny.inputs("videomae"), bool_masked_pos=masked).last_hidden_state.shape[1] == 48 - 8


def test_video_merge_strip_paints_groups_across_frames_and_restores_the_model():
    from tomesd.lab.visualize_video import draw_video_merges, moving_shapes_clip, video_group_labels, visualize_video_merges

    model = tomesd.apply_patch(tiny.build("videomae"), r=1)
    clip = moving_shapes_clip(tiny.VIDEO_FRAMES, 32, seed=0)
    assert clip.shape == (8, 32, 32, 3) and clip.dtype.name == "uint8"
    strip = visualize_video_merges(model, clip, r=[12, 4, 0, 0], matching="spacetime")
    assert strip.size == (4 * 32 + 3 * 4, 32 + 14)
    assert model._tomesd.options["r"] == 1 and not model._tomesd.options["trace_source"]  # patch as before
    # a group holding tubelet 0 of frames 0 and 1 gets the same colour in both frames; unmerged stay bare
    labels = torch.arange(64).view(4, 4, 4)
    labels[1, 0, 0] = 0
    source = F.one_hot(labels.flatten(), 64).T.float()[labels.flatten().unique()]  # (63, 64)
    assert torch.equal(video_group_labels(source, 0, (4, 4, 4)).unique(), torch.arange(63))
    pixels = np.asarray(draw_video_merges(clip[::2] * 0 + 128, labels, alpha=1.0))
    first, second = pixels[14 + 2, 2], pixels[14 + 2, 32 + 4 + 2]
    assert (first == second).all() and not (first == 128).all()
    assert (pixels[14 + 20, 20] == 128).all()


def test_benchmark_cases_fit_their_full_size_models():
    # the full-size schedules are accepted (validated at apply time, on meta-device weights: no memory)
    from tomesd.lab import transformers_bench as bench

    tokens = {"videomae_b": 1568, "vit_b16": 197, "dinov2_b": 257, "clip_l14_336": 577}
    for name, case in bench.CASES.items():
        with torch.device("meta"):
            model = bench.build(case)
        for setting in case.settings:
            tomesd.apply_patch(model, **setting)
            assert model._tomesd_transformers.num_tokens == tokens[name]
        tomesd.remove_patch(model)


def test_benchmark_runs_and_reports_at_tiny_size(capsys, tmp_path):
    from tomesd.cli.bench_transformers import main
    from tomesd.lab import transformers_bench as bench

    rows = [row for name in ("vit_b16", "videomae_b")
            for row in bench.run_case(bench.CASES[name], tiny=True, repeats=1, warmup=0, quality_samples=2)]
    out = tmp_path / "bench.json"
    assert main(["--tiny", "--models", "vit_b16", "--repeats", "1", "--warmup", "0", "--quality-samples", "2",
                 "--out", str(out)]) == 0
    assert "| ViT-B/16 224 (tiny) | r=2 global |" in capsys.readouterr().out  # the command prints the table
    assert [r["setting"] for r in json.loads(out.read_text())["rows"]] == ["r=2 global"] * 2
    assert out.with_suffix(".md").read_text().startswith("Unpatched vs patched in one process (cpu, float32, ")
    assert [row["setting"] for row in rows] == ["r=2 global"] * 3 + ["r=2 spacetime", "r=2 global", "r=2 spacetime"]
    for row in rows:
        assert row["seconds_unpatched"] > 0 and row["seconds_patched"] > 0 and row["speedup"] > 0
        assert 0.5 < row["flop_ratio"] < 1.0  # fewer tokens, fewer FLOPs
        assert -1.0 <= row["cosine"] <= 1.0 + 1e-6 and 0.0 <= row["top1_agreement"] <= 1.0
    assert "| ViT-B/16 224 (tiny) | r=2 global |" in bench.markdown(rows)


def test_switching_the_attention_implementation_after_patching_keeps_merging():
    # set_attn_implementation writes through the patched modules' config view: tomesd keeps the dispatch
    # and calls the newly chosen implementation (eager here, which returns the attention maps)
    model = tomesd.apply_patch(tiny.build("vit_classifier", "sdpa"), r=2)
    pixels = tiny.inputs("vit_classifier")
    sdpa = forward(model, "vit_classifier", pixels)
    model.set_attn_implementation("eager")
    with torch.no_grad():
        output = model(pixel_values=pixels, output_attentions=True)
    assert [a.shape[-1] for a in output.attentions] == [17, 15, 13, 11]
    assert torch.allclose(output.logits, sdpa, atol=1e-5)
    tomesd.remove_patch(model)
    assert model.vit.layers[0].attention.config is model.config
