"""torch.compile with the patch on: timm ViTs and SAM image encoders (the merge core they share).

Every check compiles with ``backend="eager"`` (dynamo traces, the FX graph replays the same aten ops), so
a graph break, a recompilation or a stale graph shows up cheaply; one real inductor compile is ``slow``.
Compiled and eager outputs are compared with a float tolerance where merging happens (the same ops,
possibly regrouped), exactly where nothing merges (r=0, after remove_patch).

CUDA-graph readiness, as far as a CPU can tell: the patched forwards run on the ``meta`` device (where
``.item()``, ``nonzero``, ``bincount`` and boolean-mask indexing cannot run: they need data) and create
no CPU tensor beyond what the unpatched model creates.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")
pytest.importorskip("segment_anything")

import tomesd  # noqa: E402
from test_patch_sam import ENCODERS, encoder_by_name  # noqa: E402
from test_patch_timm import ARCHITECTURES, build  # noqa: E402
from tomesd.merge import (  # noqa: E402
    bipartite_soft_matching,
    bipartite_soft_matching_random2d,
    merge_source,
    merge_wavg,
)
from tomesd.patch import timm as tome_timm  # noqa: E402

ATOL = 1e-5  # compiled vs eager where tokens merge: same aten ops, float regrouping at most


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test counts its own compilations."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))


def compiled(module: torch.nn.Module) -> tuple[torch.nn.Module, CompileCounterWithBackend]:
    counter = CompileCounterWithBackend("eager")
    return torch.compile(module, backend=counter, fullgraph=True), counter


def graph_breaks(module: torch.nn.Module, *args) -> tuple[int, int]:
    """(graph breaks, graphs) that dynamo finds in one call."""
    explanation = torch._dynamo.explain(module)(*args)
    torch._dynamo.reset()
    return explanation.graph_break_count, explanation.graph_count


def tensor_of(output) -> torch.Tensor:
    """The embedding of a SAM encoder's output (transformers returns a ModelOutput)."""
    return output if isinstance(output, torch.Tensor) else output[0]


# --- merge core -------------------------------------------------------------------------------------


def merge_everything(metric: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Make plans and use every way of applying one, as the patches do inside a forward."""
    plan = bipartite_soft_matching(metric, r=5, protected=1)
    features, size = merge_wavg(plan, x)
    cells = bipartite_soft_matching_random2d(metric, 4, 4, 2, 2, r=12)
    mean = cells.merge(x)
    return (features, size, merge_source(plan, None), plan.merge(x, mode="amax"), plan.unmerge(features),
            plan.rows, mean, cells.unmerge(mean))


def test_plans_are_made_and_applied_inside_one_graph():
    metric, x = torch.randn(2, 16, 4), torch.randn(2, 16, 3)
    assert graph_breaks(merge_everything, metric, x) == (0, 1)
    fn, counter = compiled(merge_everything)
    for out, expected in zip(fn(metric, x), merge_everything(metric, x)):
        assert torch.allclose(out, expected, atol=ATOL, rtol=ATOL)
    assert counter.frame_count == 1


# --- timm -------------------------------------------------------------------------------------------


def test_explain_finds_no_graph_break_in_a_patched_deit(images):
    model = tomesd.apply_patch(build("deit_distilled"), r=3, trace_source=True)
    with torch.no_grad():
        assert graph_breaks(model, images) == (0, 1)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patched_vit_is_one_graph_and_matches_eager(arch, images):
    # fullgraph=True raises on any graph break
    model = tomesd.apply_patch(build(arch), r=[3, 2, 2, 1])
    with torch.no_grad():
        eager = model(images)
        model_c, counter = compiled(model)
        out = model_c(images)
        model_c(images)
    # shrinking token counts live inside the one whole-model graph: no per-block (re)compilation
    assert counter.frame_count == 1
    assert torch.allclose(out, eager, atol=ATOL, rtol=ATOL)


def test_traced_sources_match_eager_when_compiled(images):
    model = tomesd.apply_patch(build("deit_distilled"), r=3, trace_source=True)
    with torch.no_grad():
        model(images)
        eager = tome_timm.merge_sources(model)
        model_c, counter = compiled(model)
        model_c(images)
    assert counter.frame_count == 1
    assert torch.equal(tome_timm.merge_sources(model), eager)  # 0/1 memberships: exact


def test_r0_compiled_equals_unpatched_compiled(images):
    reference_model, patched = build("deit3_layerscale"), tomesd.apply_patch(build("deit3_layerscale"), r=0)
    with torch.no_grad():
        reference = compiled(reference_model)[0](images)
        out = compiled(patched)[0](images)
    assert torch.equal(out, reference)


def test_set_r_after_compiling_recompiles_once_per_schedule(images):
    model = tomesd.apply_patch(build("vit"), r=3)
    model_c, counter = compiled(model)
    with torch.no_grad():
        first = model_c(images)
        tome_timm.set_r(model, 1)
        second = model_c(images)
        assert counter.frame_count == 2  # dynamo guards on the schedule's values: a new graph, not a stale one
        assert torch.allclose(second, model(images), atol=ATOL, rtol=ATOL)
        assert not torch.allclose(second, first, atol=1e-3)
        tome_timm.set_r(model, 3)
        again = model_c(images)
    assert counter.frame_count == 2  # the first schedule's graph is reused
    assert torch.equal(again, first)


def test_recompile_limit_fails_loudly_instead_of_running_a_stale_graph(images):
    model = tomesd.apply_patch(build("vit"), r=3)
    model_c, _ = compiled(model)
    with torch.no_grad(), torch._dynamo.config.patch(recompile_limit=1):
        model_c(images)
        tome_timm.set_r(model, 1)
        with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
            model_c(images)


def test_remove_and_reapply_after_compiling_never_run_a_stale_graph(images):
    model = build("deit_distilled")
    with torch.no_grad():
        reference = model(images)
        tomesd.apply_patch(model, r=3)
        model_c, counter = compiled(model)
        merged = model_c(images)
        tomesd.remove_patch(model)
        restored = model_c(images)
        tomesd.apply_patch(model, r=1)
        reapplied = model_c(images)
        eager_reapplied = model(images)
    assert counter.frame_count == 3  # one graph per patch state
    assert not torch.allclose(merged, reference, atol=1e-3)
    assert torch.equal(restored, reference)
    assert torch.allclose(reapplied, eager_reapplied, atol=ATOL, rtol=ATOL)


def test_block_by_block_compilation_is_bounded_by_three_graphs_at_any_depth():
    # the token count differs in every block, but blocks read only their own r: after two static graphs,
    # one with a dynamic token count serves the other 8 blocks (more than dynamo's recompile limit of 8)
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=10, img_size=96).eval()
    tomesd.apply_patch(model, r=2)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        eager = model(x)
        counter = CompileCounterWithBackend("eager")
        for block in model.blocks:
            block.compile(backend=counter, fullgraph=True)
        out = model(x)
    assert counter.frame_count == 3
    assert torch.allclose(out, eager, atol=ATOL, rtol=ATOL)


def test_a_new_batch_size_compiles_once_more_then_is_reused():
    model = tomesd.apply_patch(build("vit"), r=3)
    model_c, counter = compiled(model)
    with torch.no_grad():
        for batch in (2, 3, 5):
            x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(batch))
            assert torch.allclose(model_c(x), model(x), atol=ATOL, rtol=ATOL)
    assert counter.frame_count == 2  # batch 2, then one dynamic-batch graph for 3 and 5


@pytest.mark.slow
def test_inductor_compiled_vit_matches_eager(images):
    # a real inductor compile (C++ codegen): generated kernels may reorder float sums, hence 1e-4
    reference_model, patched = build("deit_distilled"), tomesd.apply_patch(build("deit_distilled"), r=3)
    with torch.no_grad():
        eager = patched(images)
        out = torch.compile(patched, fullgraph=True)(images)
        tome_timm.set_r(patched, 0)
        r0 = torch.compile(patched, fullgraph=True)(images)
        reference = torch.compile(reference_model, fullgraph=True)(images)
    assert torch.allclose(out, eager, atol=1e-4, rtol=1e-4)
    assert torch.allclose(r0, reference, atol=1e-6, rtol=1e-6)


# --- SAM --------------------------------------------------------------------------------------------


def test_explain_finds_no_graph_break_in_a_patched_sam_encoder(pixels):
    model, _ = encoder_by_name("segment_anything")
    tomesd.apply_patch(model, blocks="all", merge_mlp=True)
    with torch.no_grad():
        assert graph_breaks(model.image_encoder, pixels) == (0, 1)


@pytest.mark.parametrize("name", ENCODERS)
def test_patched_sam_encoder_is_one_graph_and_matches_eager(name, pixels):
    # every kind of patched call: global and windowed attention, and the MLP
    model, _ = encoder_by_name(name)
    tomesd.apply_patch(model, blocks="all", merge_mlp=True)
    encoder = model.image_encoder if name == "segment_anything" else model.vision_encoder
    with torch.no_grad():
        eager = tensor_of(encoder(pixels))
        encoder_c, counter = compiled(encoder)
        out = tensor_of(encoder_c(pixels))
    assert counter.frame_count == 1
    assert torch.allclose(out, eager, atol=ATOL, rtol=ATOL)


def test_sam_remove_and_reapply_after_compiling_never_run_a_stale_graph(pixels):
    model, _ = encoder_by_name("segment_anything")
    encoder = model.image_encoder
    with torch.no_grad():
        reference = encoder(pixels)
        tomesd.apply_patch(model)
        encoder_c, counter = compiled(encoder)
        merged = encoder_c(pixels)
        tomesd.remove_patch(model)
        restored = encoder_c(pixels)
        tomesd.apply_patch(model, sx=4, sy=4)
        reapplied = encoder_c(pixels)
        eager_reapplied = encoder(pixels)
    assert counter.frame_count == 3
    assert not torch.allclose(merged, reference, atol=1e-3)
    assert torch.equal(restored, reference)
    assert torch.allclose(reapplied, eager_reapplied, atol=ATOL, rtol=ATOL)


# --- CUDA-graph readiness (checked on CPU) -------------------------------------------------------------


class CpuTensorRecorder(TorchDispatchMode):
    """Records every aten op that returns a tensor on the CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_flatten(out)[0]):
            self.ops.append(str(func))
        return out


def cpu_ops_on_meta(run, *args) -> list[str]:
    with torch.no_grad(), CpuTensorRecorder() as recorder:
        run(*args)
    return recorder.ops


def test_the_recorder_sees_cpu_tensors_made_in_a_meta_forward():
    # the checks below can fail: an index built without a device and copied over is seen
    x = torch.empty(4, 3, device="meta")
    assert cpu_ops_on_meta(lambda: x.index_select(0, torch.arange(2).to(x.device))) == ["aten.arange.default"]
    assert cpu_ops_on_meta(lambda: x.index_select(0, torch.arange(2, device=x.device))) == []


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_patched_vit_runs_on_meta_without_creating_cpu_tensors(arch):
    model = tomesd.apply_patch(build(arch), r=[3, 2, 2, 1], trace_source=True).to("meta")
    x = torch.empty(2, 3, 64, 64, device="meta")
    assert cpu_ops_on_meta(model, x) == []
    assert tome_timm.merge_sources(model).shape == (2, model.num_prefix_tokens + 8, model.num_prefix_tokens + 16)


@pytest.mark.parametrize("name", ENCODERS)
def test_patched_sam_runs_on_meta_and_adds_no_cpu_tensor(name):
    # SAM's own relative-position code makes small CPU index tensors (torch.arange without a device): the
    # patch must add none of its own
    model, run = encoder_by_name(name)
    model.to("meta")
    x = torch.empty(1, 3, 256, 256, device="meta")
    unpatched = cpu_ops_on_meta(run, x)
    tomesd.apply_patch(model, blocks="all", merge_mlp=True)
    assert cpu_ops_on_meta(run, x) == unpatched


# --- tomesd bench-vision --compile ------------------------------------------------------------------


def test_benchmark_vision_compile_times_compiled_against_compiled(tmp_path, monkeypatch, images):
    from tomesd.cli.bench_vision import main
    from tomesd.lab import vision_bench as bench

    case = bench.Case("tiny ViT", "timm", "vit_tiny_patch16_224", 2, 64, ({"r": 3},))
    model = build("vit")
    monkeypatch.setitem(bench.CASES, "deit_s", case)
    monkeypatch.setattr(bench, "build", lambda _: (model, model, images))
    assert main(["--models", "deit_s", "--repeats", "2", "--compile", "eager", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "benchmark_compile.md").read_text()
    assert "backend eager" in table and "median of 2 runs" in table
    row = table.strip().splitlines()[-1].split("|")[1:-1]
    assert [cell.strip() for cell in row[:3]] == ["tiny ViT", "bs 2, 64 px", "r=3"]
    assert all(float(cell.strip().rstrip("x")) > 0 for cell in row[3:7])
    assert float(row[7].strip().rstrip("x")) > 1  # r=3 removes tokens, so FLOPs drop
    assert all(float(seconds) > 0 for seconds in row[8].split("/"))
    assert float(row[9]) <= ATOL  # the compiled patched model computes what the eager one does
    assert not tomesd.is_patched(model)  # the patched model was a copy
