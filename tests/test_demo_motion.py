"""The demo motion module: moving-shape clips, the adapter sized to the demo U-Net, resumable training, and the
motion evaluation (tomesd.demo.clips, tomesd.demo.motion, tomesd.lab.motion_eval)."""

from __future__ import annotations

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from tomesd.demo.clips import MIN_TRAVEL, Clip, draw_clip, random_clip, shape_boxes
from tomesd.demo.detector import detect
from tomesd.demo.shapes import HELD_OUT, Scene
from tomesd.lab.motion_eval import MotionEvaluation, run_evaluation, temporal_error, track_jitter

# --- clips ---------------------------------------------------------------------------------------------------


def test_a_clip_moves_its_shape_in_a_straight_line_at_constant_speed_inside_the_frame():
    clip = Clip(Scene("small", "red", "square", "blue"), scale=0.5, start=(0.0, 1.0), end=(1.0, 0.25))
    boxes = shape_boxes(clip, 64, 8)
    sides = {(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes}
    assert len(sides) == 1  # one size throughout
    margin = 64 // 16
    assert boxes[0][0] == margin and boxes[-1][2] == 64 - margin - 1  # from the left edge to the right one
    steps = np.diff(np.array([b[:2] for b in boxes]), axis=0)  # (7, 2)
    assert np.ptp(steps, axis=0).max() <= 1  # constant speed up to rounding
    assert (steps[:, 0] > 0).all() and (steps[:, 1] < 0).all()
    frames = draw_clip(clip, 64, 8)
    assert len(frames) == 8 and frames[0].size == (64, 64)
    for frame, (x0, y0, x1, y1) in zip(frames, boxes):  # the detector finds the square where it was drawn
        cx, cy = detect(np.asarray(frame)).centre
        assert abs(cx - (x0 + x1) / 2) < 0.5 and abs(cy - (y0 + y1) / 2) < 0.5


def test_random_clips_travel_far_enough_keep_their_split_and_are_fixed_by_the_seed():
    rng = random.Random(0)
    clips = [random_clip(rng, "held_out") for _ in range(40)]
    assert all(np.hypot(c.end[0] - c.start[0], c.end[1] - c.start[1]) >= MIN_TRAVEL for c in clips)
    assert all((c.scene.colour, c.scene.shape, c.scene.background) in HELD_OUT for c in clips)
    assert random_clip(random.Random(5)) == random_clip(random.Random(5))
    assert random_clip(random.Random(5)) != random_clip(random.Random(6))


def test_a_textured_clip_keeps_its_background_pattern_still():
    scene = Scene("small", "red", "circle", "blue", background_texture="dotted")
    frames = [np.asarray(f) for f in draw_clip(Clip(scene, 0.5, (0.0, 0.0), (1.0, 1.0), phase=3), 64, 4)]
    corner = (slice(60, 64), slice(0, 8))  # bottom left: background in every frame
    assert all(np.array_equal(frames[0][corner], f[corner]) for f in frames[1:])
    assert not np.array_equal(frames[0], frames[-1])


@pytest.mark.parametrize(("size", "frames", "match"), [(8, 4, "16 pixels"), (64, 1, "at least 2 frames")])
def test_bad_clip_sizes_raise_a_clear_error(size, frames, match):
    with pytest.raises(ValueError, match=match):
        shape_boxes(Clip(Scene("small", "red", "circle", "blue"), 0.5, (0, 0), (1, 1)), size, frames)


# --- metrics -------------------------------------------------------------------------------------------------

def _clip(start=(0.0, 0.0), end=(1.0, 1.0), frames=6):
    return [np.asarray(f) for f in draw_clip(Clip(Scene("small", "yellow", "circle", "purple"), 0.3, start, end),
                                             64, frames)]


def test_temporal_error_sees_changed_motion_not_a_steady_change_of_the_pictures():
    clip = _clip()
    assert temporal_error(clip, clip) == 0.0
    brighter = [np.clip(f.astype(int) + 10, 0, 255).astype(np.uint8) for f in clip]
    assert temporal_error(brighter, clip) < 0.05  # every frame differs, the motion does not
    assert temporal_error(_clip(end=(1.0, 0.0)), clip) > 0.5  # another path
    with pytest.raises(ValueError, match="same shape"):
        temporal_error(clip[:3], clip)


def test_track_jitter_is_near_zero_on_a_straight_track_and_sees_a_jump():
    clip = _clip()
    assert track_jitter(clip) < 0.5
    jumped = list(clip)
    jumped[3] = _clip(start=(1.0, 0.0), end=(1.0, 0.0))[0]  # one frame with the shape elsewhere
    assert track_jitter(jumped) > 5
    blank = list(clip)
    blank[2] = np.full_like(clip[0], blank[2][0, 0])  # one frame with the background only
    assert track_jitter(blank) is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"ratio": 0}, "above 0"), ({"ratio": 1.2}, "out of range"), ({"count": 0}, "count"),
    ({"frames": 40}, "2 to 32"), ({"size": 60}, "multiple of 8"),
    ({"variants": (("a", {}), ("a", {"merge_temporal": True}))}, "distinct"),
])
def test_motion_evaluation_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MotionEvaluation(**kwargs)


# --- adapter, training, evaluation -----------------------------------------------------------------------

def test_a_fresh_adapter_makes_the_video_unet_draw_each_frame_as_the_image_unet():
    from diffusers import UNetMotionModel

    from tomesd.demo.model import build_unet
    from tomesd.demo.motion import build_motion_adapter

    torch.manual_seed(0)
    image = build_unet().eval()
    video = UNetMotionModel.from_unet2d(image, build_motion_adapter()).eval()
    frames, text = 3, torch.randn(1, 16, 64)
    sample = torch.randn(1, 4, frames, 16, 16)
    with torch.no_grad():
        out = video(sample, 10, text.repeat_interleave(frames, 0)).sample  # (1, 4, F, 16, 16)
        expected = image(sample[0].transpose(0, 1), 10, text.expand(frames, -1, -1)).sample  # (F, 4, 16, 16)
    torch.testing.assert_close(out[0].transpose(0, 1), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two adapters trained 2 steps at 16 px: straight, and 1 step then resumed to 2."""
    from tomesd.cli.train_demo_motion import main as train

    root = tmp_path_factory.mktemp("motion")

    def run(name, steps):
        train(["--steps", str(steps), "--batch", "1", "--frames", "2", "--size", "16", "--checkpoint-every", "1",
               "--work", str(root / name), "--out", str(root / name / "adapter")])
        return root / name / "adapter"

    straight = run("straight", 2)
    run("resumed", 1)
    return straight, run("resumed", 2)


def test_motion_training_resumes_exactly_and_changes_only_the_motion_modules(trained):
    from safetensors.torch import load_file

    from tomesd.demo.motion import build_motion_adapter

    straight, resumed = (load_file(path / "diffusion_pytorch_model.safetensors") for path in trained)
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    fresh = build_motion_adapter().state_dict()
    assert fresh.keys() == straight.keys()
    assert any(not torch.equal(fresh[k], straight[k]) for k in fresh if k.endswith("proj_out.weight"))


def test_motion_training_rejects_frames_its_adapter_cannot_take(capsys):
    from tomesd.cli.train_demo_motion import main as train

    with pytest.raises(SystemExit) as exit_info:
        train(["--frames", "40"])
    assert exit_info.value.code == 2 and "2 to 32 frames" in capsys.readouterr().err


def test_evaluation_writes_its_report_and_identity_motion_modules_merge_to_nothing(tmp_path, trained):
    from tomesd.demo.motion import build_motion_adapter, load_video_pipeline

    build_motion_adapter().save_pretrained(tmp_path / "fresh")  # zeroed output projections: the identity
    pipe = load_video_pipeline(adapter=tmp_path / "fresh")
    variants = (("spatial", {"min_tokens": 0}), ("temporal", {"min_tokens": 0, "merge_temporal": True}))
    evaluation = MotionEvaluation(count=1, frames=3, size=32, steps=2, variants=variants, out=tmp_path / "eval")
    report = run_evaluation(evaluation, pipe)
    assert {"motion.md", "motion.json", "motion_clips.png"} <= {p.name for p in (tmp_path / "eval").iterdir()}
    import json

    rows = {s["label"]: s for s in json.loads((tmp_path / "eval" / "motion.json").read_text())["summaries"]}
    assert rows["unmerged"]["psnr_mean"] is None and "| unmerged |" in report
    assert rows["spatial"]["psnr_mean"] < 60  # merging changed the clip
    # identity motion modules: running them on merged places adds (unmerged) zeros, so both clips are the same
    assert rows["temporal"]["psnr_mean"] == rows["spatial"]["psnr_mean"]
    assert rows["temporal"]["temporal_error_mean"] == rows["spatial"]["temporal_error_mean"]
    assert load_video_pipeline(adapter=trained[0]).unet.down_blocks[0].motion_modules is not None


@pytest.mark.parametrize(("argv", "match"), [
    (["--variant", "x:merge_temporal=maybe"], "merge_temporal"),
    (["--variant", "x:no_such_option=1"], "no_such_option"),
    (["--ratio", "0"], "above 0"),
])
def test_evaluate_motion_refuses_bad_arguments_before_loading_anything(argv, match, capsys):
    from tomesd.cli.evaluate_motion import main as evaluate

    with pytest.raises(SystemExit) as exit_info:
        evaluate(argv)
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_loading_explains_a_missing_adapter(tmp_path):
    from tomesd.demo.motion import load_video_pipeline

    with pytest.raises(FileNotFoundError, match="train-demo-motion"):
        load_video_pipeline(adapter=tmp_path)


def test_the_shipped_adapter_draws_moving_clips_by_name_in_generate(tmp_path):
    from PIL import Image

    from tomesd.cli.generate import main as generate
    from tomesd.demo.motion import CLIP_FRAMES, CLIP_SIZE
    from tomesd.lab.loading import default_settings

    defaults = default_settings(" demo-motion ")
    assert (defaults["size"], defaults["frames"]) == (CLIP_SIZE, CLIP_FRAMES)
    assert generate(["--model", "demo-motion", "--prompt", "a red circle on a blue background", "--steps", "2",
                     "--ratios", "0", "--no-warmup", "--out", str(tmp_path)]) == 0
    (gif,) = tmp_path.rglob("*.gif")
    with Image.open(gif) as clip:
        assert clip.n_frames == CLIP_FRAMES and clip.size == (CLIP_SIZE, CLIP_SIZE)
