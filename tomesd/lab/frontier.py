"""The speed/quality frontier of the diffusers patch: the table, the Pareto front, the plot and the
defaults rule behind ``tomesd frontier`` (and ``scripts/frontier.py``).

Every candidate setting (this project's variants at several ratios, and tomesd 0.1.3 at the same ratios)
is measured three ways, all by ``scripts/compare_worker.py`` run with each implementation's own
interpreter, so that both are measured by the same code:

* **speed**: one full-size U-Net forward (SD 1.5 / SDXL from their configs, random weights, batch 2),
  interleaved with the same implementation's unpatched forward, median of the repetitions;
* **deviation**: in the same runs, how far the patched U-Net's output moves from the unpatched one
  (mean absolute difference over the mean absolute output): a worst case, random weights have no
  redundancy for merging to exploit;
* **image change** on the demo model (by default the textured one, whose stripes, checks, dots and outlines
  give merging something to damage): the same prompts and seeds unpatched and merged, compared by PSNR,
  SSIM and the fine-scale measures of :mod:`tomesd.lab.detail` (mean and worst image), and read by the demo
  detector (adherence to all asked attributes, and to the texture words alone).

A candidate is on the **frontier** of a speed measurement when no other candidate is at least as fast and
changes the images at most as much (mean high-frequency error, :func:`tomesd.lab.detail.high_frequency_error`),
one of the two strictly. :func:`default_rule` checks the rule the defaults must meet.

Each part of the run (the unpatched images; one setting's images; the timings of the settings no earlier
part timed at one architecture and resolution, with their own baseline) is written to ``OUT/parts/NAME.json``
with the spec it answers, when it ends. A setting is known by every option it runs with
(:attr:`Candidate.patch_options`, the defaults filled in), not by its label: a rerun reuses what was measured,
so a stopped run resumes part by part and a new variant costs only itself, and a changed default is measured
anew. Images are drawn again when the model's files change (:func:`fingerprint`).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tomesd.lab.bench import UNET_CONFIGS, images_spec, machine_description, run_worker, speed_spec
from tomesd.patch.diffusers.options import OPTIONS

__all__ = [
    "OURS", "QUALITY_KEY", "REQUIRED_SPEEDUP", "STANDARD_VARIANTS", "Candidate", "FrontierRun", "Parts", "SpeedSpec",
    "default_rule", "fingerprint", "frontier_table", "mark_frontier", "parse_speed", "plot_frontier", "run_frontier",
]

OURS = "ours"
#: The image-change measure the frontier is drawn against (lower is better).
QUALITY_KEY = "hf_error"
#: The variants measured unless told otherwise: the defaults and each of their choices turned the other way
#: (MLP merging off, keys/values pooled, only the finest level, matching within each cell).
STANDARD_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default", {}),
    ("no-mlp", {"merge_mlp": False}),
    ("kv-pool", {"kv_downsample": 2}),
    ("finest-level", {"max_downsample": 1}),
    ("local", {"matching": "local"}),
)
TEXTURE_ATTRIBUTES = ("texture", "background_texture")


@dataclass(frozen=True)
class SpeedSpec:
    """One speed measurement: an architecture of :data:`tomesd.lab.bench.UNET_CONFIGS` at a resolution, the
    ratios and the variant labels timed there (None: every one of the run; the label ``default`` takes in
    tomesd 0.1.3's candidates too)."""

    arch: str
    resolution: int
    ratios: tuple[float, ...] | None = None
    variants: tuple[str, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.arch}:{self.resolution}"

    def selects(self, candidate: "Candidate") -> bool:
        return ((self.ratios is None or candidate.ratio in self.ratios)
                and (self.variants is None or candidate.variant in self.variants))


def parse_speed(text: str) -> SpeedSpec:
    """``ARCH:PX[:RATIOS[:VARIANTS]]``, lists joined by ``+``: ``"sd15:512"``, ``"sdxl:1024:0.5"``,
    ``"sd15:1024:0.5:default+no-mlp"`` (an empty list is every one: ``"sd15:1024::default"``).

    Raises:
        ValueError: an unknown architecture, a resolution that is not a positive multiple of 8, a ratio out
            of (0, 1).
    """
    arch, _, rest = text.partition(":")
    resolution, _, rest = rest.partition(":")
    ratios, _, variants = rest.partition(":")
    if arch not in UNET_CONFIGS:
        raise ValueError(f"speed {text!r}: architecture must be one of {', '.join(UNET_CONFIGS)}")
    if not resolution.isdigit() or int(resolution) <= 0 or int(resolution) % 8:
        raise ValueError(f"speed {text!r}: the resolution must be a positive multiple of 8 pixels, e.g. sd15:512")
    chosen = None
    if ratios:
        try:
            chosen = tuple(sorted(float(r) for r in ratios.split("+")))
        except ValueError:
            raise ValueError(f"speed {text!r}: ratios must be numbers joined by '+', e.g. sd15:1024:0.3+0.5") from None
        if not all(0 < r < 1 for r in chosen):
            raise ValueError(f"speed {text!r}: every ratio must be in (0, 1)")
    return SpeedSpec(arch, int(resolution), chosen, tuple(variants.split("+")) if variants else None)


@dataclass
class Candidate:
    """One setting and what was measured of it (the dictionaries are filled as the parts come in)."""

    implementation: str  # OURS or "tomesd 0.1.3"
    variant: str
    ratio: float
    options: dict[str, Any] = field(default_factory=dict)
    speedup: dict[str, float] = field(default_factory=dict)  # SpeedSpec.key -> x
    deviation: dict[str, float] = field(default_factory=dict)  # SpeedSpec.key -> relative mean |difference|
    quality: dict[str, float] = field(default_factory=dict)  # see image_quality
    images: list[str] = field(default_factory=list)  # the PNG files, one per prompt
    frontier: dict[str, bool] = field(default_factory=dict)  # SpeedSpec.key -> on the front

    @property
    def name(self) -> str:
        return f"{self.implementation} {self.variant} {self.ratio:g}"

    @property
    def patch_options(self) -> dict[str, Any]:
        """Every option the patch runs with: for this project the defaults filled in (so that what was
        measured before a default changed is never taken for the new default), for tomesd 0.1.3 the ratio
        alone (its defaults never change)."""
        given = {"ratio": self.ratio, **self.options}
        return {**OPTIONS, **given} if self.implementation == OURS else given

    @property
    def key(self) -> str:
        """A short hash of :attr:`patch_options`: what a measured part is found by, whatever its label."""
        return hashlib.sha256(json.dumps(self.patch_options, sort_keys=True).encode()).hexdigest()[:12]

    def worker_setting(self) -> dict[str, Any]:
        return {"label": self.key, "options": self.patch_options}


def make_candidates(ratios: Sequence[float], variants: Sequence[tuple[str, dict[str, Any]]],
                    original: str | None) -> list[Candidate]:
    """Every variant at every ratio for this project and, when ``original`` (0.1.3's implementation name)
    is given, that implementation at the same ratios with its own defaults."""
    candidates = [Candidate(OURS, label, r, dict(options)) for label, options in variants for r in ratios]
    if original:
        candidates += [Candidate(original, "default", r) for r in ratios]
    return candidates


# ---------------------------------------------------------------- resumable parts

class Parts:
    """``OUT/parts/NAME.json``: each part's spec and result. :meth:`get` reuses a part whose spec matches;
    :meth:`like` lists the parts of one kind, so that a run measures only what none of them holds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, spec: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.folder / f"{name}.json"
        if path.exists():
            saved = json.loads(path.read_text())
            if saved["spec"] == spec:
                print(f"frontier: {name}: reusing {path}", file=sys.stderr, flush=True)
                return saved["result"]
        print(f"frontier: {name}: measuring", file=sys.stderr, flush=True)
        result = measure()
        partial = path.with_suffix(".json.partial")
        partial.write_text(json.dumps({"spec": spec, "result": result}, indent=1))
        partial.replace(path)  # a stopped run never leaves half a part
        return result

    def like(self, prefix: str, fixed: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(name, spec, result) of every part named ``prefix-N`` whose spec has the items of ``fixed``."""
        found = []
        for path in sorted(self.folder.glob(f"{prefix}-*.json")):
            if path.stem[len(prefix) + 1:].isdigit():
                saved = json.loads(path.read_text())
                if all(saved["spec"].get(key) == value for key, value in fixed.items()):
                    found.append((path.stem, saved["spec"], saved["result"]))
        return found


def fingerprint(folder: Path) -> str:
    """A short hash of every file in ``folder`` (names and bytes): a retrained model gets new images."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- image change on the demo model

def image_quality(reference: Sequence[Any], images: Sequence[Any], prompts: Sequence[str]) -> dict[str, float]:
    """One setting's images against the unpatched ones: PSNR / SSIM (means), the detail measures (mean, median
    and worst), adherence to every asked attribute and to the texture words alone."""
    from tomesd.lab.detail import summarize_detail
    from tomesd.lab.quality import against_baseline

    metrics = against_baseline(reference, images)
    quality = {"psnr": metrics.psnr, "ssim": metrics.ssim}
    for name, summary in summarize_detail(images, reference).items():
        quality[name] = summary.mean
        quality[f"{name}_median"] = summary.median
        quality[f"{name}_worst"] = summary.worst
    quality.update(adherence_scores(images, prompts))
    return quality


def adherence_scores(images: Sequence[Any], prompts: Sequence[str]) -> dict[str, float]:
    """``adherence``: share of all asked attributes the detector finds; ``texture_adherence``: of the texture
    words alone (NaN when no prompt names one)."""
    from tomesd.demo.adherence import adherence_details

    results = adherence_details(images, prompts)
    matched = [ok for r in results for ok in r.matched.values()]
    textures = [ok for r in results for name, ok in r.matched.items() if name in TEXTURE_ATTRIBUTES]
    return {"adherence": sum(matched) / len(matched),
            "texture_adherence": sum(textures) / len(textures) if textures else math.nan}


def draw_part(python: Path, candidate: Candidate | None, model: Path, prompts: list[str], seed: int,
              threads: int, folder: Path) -> dict[str, Any]:
    """Every prompt drawn under ``candidate`` (None: unpatched) by the tomesd ``python`` imports, as PNG files
    in ``folder / key``; returns the files."""
    settings = [] if candidate is None else [candidate.worker_setting()]
    spec = images_spec(model, prompts, seed, threads, folder, settings, unpatched=candidate is None)
    return {"files": run_worker(python, spec)["images"]["unpatched" if candidate is None else candidate.key]}


def measure_images(parts: Parts, slug: str, python: Path, candidates: list[Candidate], run: "FrontierRun",
                   prompts: list[str]) -> tuple[dict[str, float], list[str]]:
    """Draw (or reuse) the unpatched images and each candidate's, one part each, and score every candidate;
    returns the unpatched images' adherence and their files."""
    from PIL import Image

    def load(files: list[str]) -> list[Any]:
        return [Image.open(f).convert("RGB") for f in files]

    common = {"model": fingerprint(run.model), "prompts": prompts, "seed": run.seed}
    folder = run.out / "images" / slug

    def drawn(candidate: Candidate | None) -> list[str]:
        name = f"images-{slug}-{'unpatched' if candidate is None else candidate.key}"
        spec = common if candidate is None else {**common, "setting": candidate.worker_setting()}
        part = parts.get(name, spec, lambda: draw_part(python, candidate, run.model, prompts, run.seed, run.threads,
                                                       folder))
        return part["files"]

    reference_files = drawn(None)
    reference = load(reference_files)
    for candidate in candidates:
        candidate.images = drawn(candidate)
        candidate.quality = image_quality(reference, load(candidate.images), prompts)
    return adherence_scores(reference, prompts), reference_files


# ---------------------------------------------------------------- speed and deviation (full-size U-Nets)

def speed_part(python: Path, candidates: list[Candidate], speed: SpeedSpec, repeats: int, threads: int) -> dict:
    """One implementation's candidates timed at ``speed``, each against its own unpatched forward."""
    settings = [c.worker_setting() for c in candidates]
    return run_worker(python, speed_spec(speed.arch, speed.resolution, 2, repeats, threads, settings))


def measure_speed(parts: Parts, slug: str, python: Path, candidates: list[Candidate], speed: SpeedSpec,
                  run: "FrontierRun") -> None:
    """Fill each candidate's speedup and deviation at ``speed`` from the parts that timed it, timing the
    ones none did (with their own interleaved baseline) as one new part."""
    prefix = f"speed-{slug}-{speed.arch}-{speed.resolution}"
    fixed = {"arch": speed.arch, "resolution": speed.resolution, "repeats": run.repeats, "threads": run.threads}
    wanted = [c for c in candidates if speed.selects(c)]

    def timed() -> dict[str, dict[str, Any]]:
        """The worker's entry of every setting some part timed, by its key."""
        return {entry["label"]: entry for _, _, result in parts.like(prefix, fixed) for entry in result["settings"]}

    missing = [c for c in wanted if c.key not in timed()]
    if missing:
        spec = {**fixed, "settings": [c.worker_setting() for c in missing]}
        parts.get(f"{prefix}-{len(parts.like(prefix, {}))}", spec,
                  lambda: speed_part(python, missing, speed, run.repeats, run.threads))
    entries = timed()
    for candidate in wanted:
        entry = entries[candidate.key]
        candidate.speedup[speed.key] = entry["speedup"]
        candidate.deviation[speed.key] = entry["deviation"]


# ---------------------------------------------------------------- the front and the rule

def mark_frontier(candidates: list[Candidate], key: str, quality_key: str = QUALITY_KEY) -> None:
    """Set ``frontier[key]`` on every candidate measured at ``key``: True when no other one is at least as
    fast and changes the images at most as much, one of the two strictly."""
    measured = [c for c in candidates if key in c.speedup and quality_key in c.quality]
    for c in measured:
        c.frontier[key] = not any(
            o.speedup[key] >= c.speedup[key] and o.quality[quality_key] <= c.quality[quality_key]
            and (o.speedup[key] > c.speedup[key] or o.quality[quality_key] < c.quality[quality_key])
            for o in measured
        )


#: The rule for the defaults (the quality issue): the speed each default must keep, eager.
REQUIRED_SPEEDUP = {"sd15:512": 1.3, "sdxl:1024": 1.5}


def default_rule(candidates: list[Candidate], original: str | None) -> list[tuple[str, bool | None, str]]:
    """Check the defaults: on the frontier of every speed measured; images changed no more than by tomesd
    0.1.3 at ratio 0.5 (PSNR no lower, high-frequency error no higher); SD 1.5 512 px >= 1.3x and SDXL 1024 px
    >= 1.5x. Returns (criterion, passed or None when not measured, the figures)."""
    ours = _find(candidates, OURS, "default", OPTIONS["ratio"])
    checks: list[tuple[str, bool | None, str]] = []
    if ours is None:
        return [("the defaults were measured", False, f"no 'default' candidate at ratio {OPTIONS['ratio']:g}")]
    for key, on in ours.frontier.items():
        figures = f"{ours.speedup[key]:.2f}x, hf_error {ours.quality[QUALITY_KEY]:.3f}"
        checks.append((f"on the frontier at {key}", on, figures))
    reference = _find(candidates, original, "default", 0.5) if original else None
    if reference is None or not reference.quality:
        checks.append(("images changed no more than tomesd 0.1.3 at 0.5", None, "0.1.3 not measured"))
    else:
        for metric, better in (("psnr", max), (QUALITY_KEY, min)):
            mine, theirs = ours.quality[metric], reference.quality[metric]
            checks.append((f"{metric} no worse than tomesd 0.1.3 at 0.5", better(mine, theirs) == mine,
                           f"{mine:.3f} vs {theirs:.3f}"))
    for key, needed in REQUIRED_SPEEDUP.items():
        got = ours.speedup.get(key)
        checks.append((f"{key} speedup >= {needed}x", None if got is None else got >= needed,
                       "not measured" if got is None else f"{got:.3f}x"))  # 1.496x is no 1.50x
    return checks


def _find(candidates: list[Candidate], implementation: str | None, variant: str, ratio: float) -> Candidate | None:
    return next((c for c in candidates if (c.implementation, c.variant, c.ratio) == (implementation, variant, ratio)),
                None)


# ---------------------------------------------------------------- outputs

def speed_keys(speeds: Sequence[SpeedSpec]) -> list[str]:
    """The ``ARCH:PX`` measured, once each in the order given: several selectors may time settings at one."""
    return list(dict.fromkeys(s.key for s in speeds))


def frontier_table(candidates: list[Candidate], speeds: Sequence[SpeedSpec], unpatched: dict[str, float]) -> str:
    """One Markdown row per candidate: speedups (a star marks the frontier), deviations, image change."""
    keys = speed_keys(speeds)
    header = ["implementation", "variant", "ratio", *[f"{k} speedup" for k in keys],
              *[f"{k} deviation" for k in keys], "PSNR dB", "SSIM", "hf_error mean / median / worst",
              "GMSD mean / worst", "hf kept", "adherence", "texture adh."]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines.append("| " + " | ".join(["unpatched", "", "0", *["1.00x"] * len(keys), *["0"] * len(keys), "inf", "1.000",
                                    "0 / 0 / 0", "0 / 0", "1.00", f"{unpatched['adherence']:.3f}",
                                    f"{unpatched['texture_adherence']:.3f}"]) + " |")
    for c in candidates:
        speed = [f"{c.speedup[k]:.2f}x" + (" *" if c.frontier.get(k) else "") if k in c.speedup else "-" for k in keys]
        deviation = [f"{c.deviation[k]:.3f}" if k in c.deviation else "-" for k in keys]
        q = c.quality
        lines.append("| " + " | ".join([
            c.implementation, c.variant, f"{c.ratio:g}", *speed, *deviation, f"{q['psnr']:.2f}", f"{q['ssim']:.3f}",
            f"{q['hf_error']:.3f} / {q['hf_error_median']:.3f} / {q['hf_error_worst']:.3f}",
            f"{q['gmsd']:.3f} / {q['gmsd_worst']:.3f}",
            f"{q['hf_retained']:.2f}", f"{q['adherence']:.3f}", f"{q['texture_adherence']:.3f}"]) + " |")
    return "\n".join(lines) + "\n"


def rule_text(checks: list[tuple[str, bool | None, str]]) -> str:
    marks = {True: "yes", False: "NO", None: "not measured"}
    return "\n".join(f"- {criterion}: {marks[passed]} ({figures})" for criterion, passed, figures in checks) + "\n"


def plot_frontier(candidates: list[Candidate], speeds: Sequence[SpeedSpec], path: Path) -> None:
    """A PNG: for each speed measurement, speedup against image change on the demo model (top) and against the
    random-weights deviation (bottom); one line per (implementation, variant) over the ratios, the frontier
    drawn dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    if not speeds:  # images only: each candidate's image change
        figure = Figure(figsize=(6.4, 0.3 * len(candidates) + 1), layout="constrained")
        ax = figure.subplots()
        ax.barh([c.name for c in candidates], [c.quality[QUALITY_KEY] for c in candidates])
        ax.set(xlabel="image change on the demo model: mean high-frequency error (lower is closer)")
        ax.tick_params(labelsize=7)
        figure.savefig(path, dpi=110)
        return
    keys = speed_keys(speeds)
    figure = Figure(figsize=(4.6 * len(keys), 8), layout="constrained")
    axes = figure.subplots(2, len(keys), squeeze=False)
    groups = dict.fromkeys((c.implementation, c.variant) for c in candidates)
    styles = {group: _line_style(index, group[0] == OURS) for index, group in enumerate(groups)}
    for column, key in enumerate(keys):
        for row, (measure, label) in enumerate(((lambda c: c.quality.get(QUALITY_KEY), "image change: mean "
                                                 "high-frequency error"),
                                                (lambda c: c.deviation.get(key), f"{key} random-weights deviation"))):
            ax = axes[row][column]
            for implementation, variant in groups:
                points = [c for c in candidates if (c.implementation, c.variant) == (implementation, variant)
                          and key in c.speedup and measure(c) is not None]
                if points:
                    ax.plot([measure(c) for c in points], [c.speedup[key] for c in points],
                            label=f"{implementation} {variant}", **styles[(implementation, variant)])
                    for c in points:
                        ax.annotate(f"{c.ratio:g}", (measure(c), c.speedup[key]), fontsize=6,
                                    xytext=(3, 3), textcoords="offset points")
            if row == 0:
                front = sorted((c for c in candidates if c.frontier.get(key)), key=lambda c: c.quality[QUALITY_KEY])
                ax.plot([c.quality[QUALITY_KEY] for c in front], [c.speedup[key] for c in front], color="black",
                        linestyle="--", linewidth=0.8, label="frontier")
            ax.set(xlabel=label + " (lower is closer)", ylabel=f"{key} speedup (x)", title=f"{key} px")
            ax.xaxis.label.set_fontsize(8)
            ax.legend(fontsize=6)
    figure.savefig(path, dpi=110)


def _line_style(index: int, ours: bool) -> dict[str, Any]:
    """One (implementation, variant) line's look, the same in every panel: ten colours, then new markers
    (more than ten lines would repeat a colour), and another implementation dotted."""
    from matplotlib import colormaps

    return {"color": colormaps["tab10"](index % 10), "marker": "os^Dv"[index // 10 % 5],
            "linestyle": "-" if ours else ":"}


# ---------------------------------------------------------------- the run

@dataclass(frozen=True)
class FrontierRun:
    """What one frontier run measures (see :func:`run_frontier`).

    Attributes:
        model: the demo pipeline folder the images are drawn with (the textured model).
        ratios: merge ratios of every candidate.
        variants: (label, patch options) of this project's candidates.
        speeds: the speed measurements.
        count: prompts drawn per setting (textured held-out captions unless ``textures`` is False).
        original: tomesd 0.1.3's interpreter (``scripts/setup_tomesd013.sh``), or None to leave it out.
        repeats, threads, seed: timing repetitions, torch CPU threads, the prompts' and images' seed.
        out: the output folder.
    """

    model: Path
    ratios: tuple[float, ...] = (0.3, 0.5, 0.7)
    variants: tuple[tuple[str, dict[str, Any]], ...] = STANDARD_VARIANTS
    speeds: tuple[SpeedSpec, ...] = (SpeedSpec("sd15", 512),)
    count: int = 24
    textures: bool = True
    original: Path | None = None
    repeats: int = 3
    threads: int = 2
    seed: int = 0
    out: Path = Path("samples/frontier")


def run_frontier(run: FrontierRun) -> str:
    """Measure every part (reusing the finished ones), mark the frontier, check the defaults rule, write
    ``frontier.md``, ``frontier.json`` and ``frontier.png`` to ``run.out``; returns the Markdown."""
    from tomesd.demo.shapes import evaluation_captions

    python = {OURS: Path(sys.executable)}
    original = None
    if run.original is not None:
        original = "tomesd 0.1.3"
        python[original] = run.original
    candidates = make_candidates(run.ratios, run.variants, original)
    by_implementation = {name: [c for c in candidates if c.implementation == name] for name in python}
    prompts = evaluation_captions(run.count, "held_out", run.seed, textures=run.textures)
    parts = Parts(run.out / "parts")
    unpatched: dict[str, float] = {}
    reference: list[str] = []
    for name, exe in python.items():
        reference_adherence, files = measure_images(parts, slug(name), exe, by_implementation[name], run, prompts)
        unpatched, reference = unpatched or reference_adherence, reference or files
    for speed in run.speeds:
        for name, exe in python.items():
            measure_speed(parts, slug(name), exe, by_implementation[name], speed, run)
    for key in speed_keys(run.speeds):
        mark_frontier(candidates, key)
    checks = default_rule(candidates, original)
    return write_frontier(run, candidates, unpatched, checks, prompts, reference)


def slug(implementation: str) -> str:
    return implementation.replace(" ", "-")


def save_comparison(candidates: list[Candidate], reference: list[str], prompts: list[str], path: Path,
                    shown: int = 4) -> None:
    """A grid of the ``shown`` prompts whose unpatched images hold the most fine detail: unpatched, then every
    candidate at the default ratio."""
    from PIL import Image

    from tomesd.lab.demo_eval import save_grid
    from tomesd.lab.detail import high_frequency_energy

    def load(file: str) -> Any:
        return Image.open(file).convert("RGB")

    columns = [c for c in candidates if c.ratio == OPTIONS["ratio"]]
    detail = [high_frequency_energy(load(f)) for f in reference]
    chosen = sorted(range(len(reference)), key=lambda i: -detail[i])[:shown]
    rows = [[load(reference[i]), *[load(c.images[i]) for c in columns]] for i in chosen]
    titles = [[f"unpatched: {prompts[i]}", *[c.name for c in columns]] for i in chosen]
    save_grid(path, rows, titles)


def write_frontier(run: FrontierRun, candidates: list[Candidate], unpatched: dict[str, float],
                   checks: list[tuple[str, bool | None, str]], prompts: list[str], reference: list[str]) -> str:
    run.out.mkdir(parents=True, exist_ok=True)
    text = (
        f"Speed: one full-size U-Net forward (random weights, batch 2, fp32), median of {run.repeats} interleaved "
        f"with the same implementation's unpatched forward; deviation: mean |patched - unpatched output| / mean "
        f"|unpatched output| in those runs. Image change: {run.count} held-out "
        f"{'textured ' if run.textures else ''}prompts on `{run.model}`, each against the unpatched image of the "
        f"same seed (PSNR, SSIM: means; hf_error: energy of the difference above 1/8 cycle per pixel over the "
        f"reference's; GMSD: gradient magnitude similarity deviation; hf kept: fine-scale energy kept; adherence: "
        f"share of asked attributes the detector finds). `*`: on the frontier of that speed against mean "
        f"hf_error. {machine_description('cpu', 'float32', run.repeats, 0)}.\n\n"
        + frontier_table(candidates, run.speeds, unpatched)
        + "\nThe defaults rule (ratio "
        f"{OPTIONS['ratio']:g}, every other option at its default):\n\n" + rule_text(checks)
    )
    (run.out / "frontier.md").write_text(text)
    (run.out / "frontier.json").write_text(json.dumps(
        {"command": " ".join(sys.argv), "unpatched": unpatched, "candidates": [asdict(c) for c in candidates],
         "rule": checks}, indent=1))
    plot_frontier(candidates, run.speeds, run.out / "frontier.png")
    save_comparison(candidates, reference, prompts, run.out / "frontier_images.png")
    return text
