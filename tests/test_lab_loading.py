"""tomesd.lab.loading on toy pipelines written to tmp_path: folders, single files, refusals, dtype names."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from tomesd.lab.loading import check_source, default_settings, load_pipeline, parse_dtype


def test_loads_a_diffusers_folder_on_the_device_and_dtype(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir, device="cpu", dtype="bfloat16")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.unet.dtype == torch.bfloat16 and pipe.unet.device.type == "cpu"
    assert pipe._progress_bar_config == {"disable": True}


def test_a_folder_without_safetensors_weights_is_refused(tmp_path):
    import tiny

    folder = tmp_path / "pickled"
    tiny.sd_pipeline(tmp_path / "tok").save_pretrained(folder, safe_serialization=True)
    for weights in folder.glob("*/*.safetensors"):
        torch.save({}, weights.with_suffix(".bin"))
        weights.unlink()
    with pytest.raises((OSError, ValueError)):
        load_pipeline(folder)


def test_a_folder_with_its_own_pipeline_code_is_refused_without_running_it(tmp_path):
    import tiny

    folder = tmp_path / "custom"
    tiny.sd_pipeline(tmp_path / "tok").save_pretrained(folder, safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": ["my_pipeline", "MyPipeline"]}))
    marker = tmp_path / "code-ran"
    (folder / "my_pipeline.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from diffusers import StableDiffusionPipeline\n\nclass MyPipeline(StableDiffusionPipeline):\n    pass\n"
    )
    with pytest.raises(ValueError, match="contains custom code in my_pipeline.py"):
        load_pipeline(folder)  # trust_remote_code is never passed
    assert not marker.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "not found"),
        (lambda p: p, "no model_index.json"),
        (lambda p: (p / "model.ckpt").write_bytes(b"x") and p / "model.ckpt", "not a .safetensors file"),
        (lambda p: "not a model id", "not found"),
    ],
    ids=["missing-path", "folder-without-pipeline", "pickle-checkpoint", "bad-id"],
)
def test_bad_sources_raise_a_clear_value_error(tmp_path, make, message):
    with pytest.raises(ValueError, match=message):
        load_pipeline(make(tmp_path))


def test_config_only_applies_to_single_files(tiny_pipeline_dir):
    with pytest.raises(ValueError, match="only applies to a single .safetensors"):
        load_pipeline(tiny_pipeline_dir, config=tiny_pipeline_dir)


BASE_V1 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # diffusers' base model for SD 1.x single files


def _cache_configs(cache, repo: str, folder) -> None:
    """Put ``folder``'s configs and tokenizer files (no weights) into ``cache`` as the hub's ``repo``, the
    way ``hf download repo --include '*.json' '*.txt'`` leaves them."""
    import shutil

    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for file in folder.rglob("*"):
        if file.suffix in (".json", ".txt"):
            target = root / "snapshots" / commit / file.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)


def _ldm_file(pipe, tmp_path):
    import ldm_checkpoint

    path = tmp_path / "community-model.safetensors"
    save_file(ldm_checkpoint.ldm_state_dict(pipe), str(path))
    return path


@pytest.mark.parametrize("configs", ["config-folder", "cached-base-model"])
def test_loads_a_single_safetensors_checkpoint_offline(tiny_pipeline_dir, tmp_path, empty_hub_cache, configs):
    folder_pipe = load_pipeline(tiny_pipeline_dir)
    path = _ldm_file(folder_pipe, tmp_path)
    if configs == "config-folder":
        pipe = load_pipeline(path, config=tiny_pipeline_dir)  # configs from the folder, weights from the file
    else:  # just the file: diffusers recognises SD 1.x and finds its base model's configs in the cache
        _cache_configs(empty_hub_cache, BASE_V1, tiny_pipeline_dir)
        pipe = load_pipeline(path)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    for name in ("unet", "vae", "text_encoder"):
        expected, loaded = getattr(folder_pipe, name).state_dict(), getattr(pipe, name).state_dict()
        assert expected.keys() == loaded.keys()
        assert all(torch.equal(expected[k], loaded[k].reshape(expected[k].shape)) for k in expected), name


def test_a_single_file_without_configs_offline_says_what_to_pass(tiny_pipeline_dir, tmp_path, empty_hub_cache):
    path = _ldm_file(load_pipeline(tiny_pipeline_dir), tmp_path)
    with pytest.raises(ValueError, match="Pass config=") as error:
        load_pipeline(path)
    message = str(error.value)
    assert str(path) in message and BASE_V1 in message and f"hf download {BASE_V1}" in message


@pytest.mark.parametrize(
    "model_type, pipeline",
    [("v1", "StableDiffusionPipeline"), ("xl_base", "StableDiffusionXLPipeline"), ("sd3", None)],
)
def test_single_file_architecture_is_recognised_from_its_keys(tmp_path, model_type, pipeline):
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    from tomesd.lab.loading import _single_file_architecture

    keys = {"v1": ["model.diffusion_model.out.0.weight"], "xl_base": [CHECKPOINT_KEY_NAMES["xl_base"]],
            "sd3": [CHECKPOINT_KEY_NAMES["sd3"][0], "model.diffusion_model.pos_embed"]}[model_type]
    shapes = {CHECKPOINT_KEY_NAMES["sd3"][0]: (1, 9216), "model.diffusion_model.pos_embed": (1, 36864, 1)}
    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(shapes.get(key, (1,))) for key in keys}, str(path))
    if pipeline is None:
        with pytest.raises(ValueError, match="'sd3' checkpoint; single files load here as Stable Diffusion"):
            _single_file_architecture(path)
    else:
        assert _single_file_architecture(path)[0] == pipeline


def test_parse_dtype():
    assert parse_dtype("float16") is torch.float16
    assert parse_dtype(torch.bfloat16) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        parse_dtype("fp8")


def test_user_models_get_usual_sd_defaults(tiny_pipeline_dir):
    defaults = default_settings(tiny_pipeline_dir)
    assert (defaults["size"], defaults["steps"], defaults["guidance"]) == (512, 25, 7.5)
    assert defaults["prompts"] and json.dumps(defaults)


def test_demo_defaults_come_from_the_demo_model():
    demo = pytest.importorskip("tomesd.demo", reason="the demo model has not landed on this branch yet")
    defaults = default_settings("demo")
    assert defaults["size"] == demo.DEFAULT_SIZE and defaults["prompts"] == list(demo.EXAMPLE_PROMPTS)
    # the shipped folders by path or by name draw at the demo's settings too, not at 512 px and 25 steps,
    # which on a model trained at 128 px takes minutes per image
    for folder in (demo.TEXTURED_MODEL_DIR, demo.DEMO_MODEL_DIR, os.path.relpath(demo.TEXTURED_MODEL_DIR),
                   "demo-textured", " demo-textured "):
        assert default_settings(folder) == defaults


def test_the_textured_demo_model_loads_by_name_and_refuses_a_config():
    from safetensors.torch import load_file

    from tomesd.demo import TEXTURED_MODEL_DIR

    pipe = load_pipeline("demo-textured")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    shipped = load_file(TEXTURED_MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors")
    plain = load_pipeline("demo").unet.state_dict()
    name = "conv_in.weight"
    assert torch.equal(pipe.unet.state_dict()[name], shipped[name]) and not torch.equal(plain[name], shipped[name])
    assert check_source(" demo-textured ") == "demo-textured"
    with pytest.raises(ValueError, match="only applies to a single .safetensors"):
        check_source("demo-textured", config="x")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"offload": "model"}, "offload='model' needs a GPU device, not 'cpu'"),
        ({"offload": "sequential"}, "needs a GPU"),
        ({"attention": "xformers"}, "attention='xformers' needs a GPU"),
        ({"offload": "disk"}, "unknown offload 'disk'"),
        ({"attention": "flash"}, "unknown attention 'flash'"),
    ],
)
def test_impossible_placements_are_refused_before_loading(tiny_pipeline_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_pipeline(tiny_pipeline_dir, device="cpu", **kwargs)


def test_classic_attention_replaces_the_unets_processors(tiny_pipeline_dir):
    from diffusers.models.attention_processor import AttnProcessor

    pipe = load_pipeline(tiny_pipeline_dir, attention="classic")
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor}
