"""Training the K-token encoder jointly with LoRA adapters on a frozen causal LM.

Each example is a context (compressed by the encoder), a question and an answer (both kept as tokens).
The loss is the LM's cross-entropy on the answer tokens (and the end of sequence) only. An optional
curriculum over input length starts with short contexts and admits longer ones as training goes on.
Checkpoints are safetensors: the encoder's weights (its configuration in the file's metadata) and the
LoRA adapter saved by PEFT.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from .compress import IGNORE_INDEX, compress_prompt
from .encoder import KTokenEncoder
from .generate import generate_text
from .tokens import pad_sequences, tokenize_prompts
from .task import QAExample

__all__ = [
    "LengthCurriculum",
    "StageOptions",
    "accuracy",
    "add_lora",
    "answer_loss",
    "encode_training_batch",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "train_stage",
]

ENCODER_FILE = "encoder.safetensors"
TRAIN_STATE_FILE = "train_state.pt"
DONE_FILE = "done.json"
RUNS_FILE = "runs.jsonl"
LORA_DIR = "lora"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def encode_training_batch(
    tokenizer: Any, examples: Sequence[QAExample], answer_eos: bool = True
) -> dict[str, Tensor]:
    """Token tensors for :func:`answer_loss`: contexts as :func:`~tomesd.llm.tokens.tokenize_prompts`
    makes them, and tails ``question answer <eos>`` right-padded, labelled on ``answer <eos>`` only (one such
    turn per question of the example, follow-ups included). ``answer_eos=False`` leaves the ``<eos>`` out
    (for continuations, such as the next line of a source file, that do not end the text)."""
    batch = tokenize_prompts(tokenizer, [e.context for e in examples])
    eos = [tokenizer.eos_token_id] if answer_eos else []
    tails, labels = [], []
    for example in examples:
        tail, label = [], []
        for question_text, answer_text in example.turns():
            question = tokenizer(question_text, add_special_tokens=False)["input_ids"]
            answer = tokenizer(answer_text, add_special_tokens=False)["input_ids"] + eos
            tail += question + answer
            label += [IGNORE_INDEX] * len(question) + answer
        tails.append(tail)
        labels.append(label)
    batch["tail_ids"], batch["tail_mask"] = pad_sequences(tails)
    batch["tail_labels"] = pad_sequences(labels, IGNORE_INDEX)[0]
    return batch


def answer_loss(model: Any, batch: dict[str, Tensor], k: int, encoder: KTokenEncoder | None = None) -> Tensor:
    """Mean cross-entropy of ``model`` on the labelled tail tokens after the context compressed by ``k``."""
    prompt = compress_prompt(
        model,
        batch["input_ids"],
        k,
        batch["attention_mask"],
        batch["tail_ids"],
        batch["tail_mask"],
        batch["tail_labels"],
        encoder=encoder,
        padding_side="right",
        head_ids=batch.get("head_ids"),
    )
    out = model(
        inputs_embeds=prompt.inputs_embeds,
        attention_mask=prompt.attention_mask,
        position_ids=prompt.position_ids,
        labels=prompt.labels,
    )
    return out.loss


class LengthCurriculum:
    """Training batches whose longest admitted context grows linearly over the first ``ramp_steps``.

    Args:
        examples: the training examples.
        lengths: each example's context length (tokens).
        start_length: longest context admitted at step 0 (the shortest example always is).
        ramp_steps: steps until every example is admitted; 0 disables the curriculum.
        seed: seeds the sampling (its own generator, not the global RNG).
    """

    def __init__(
        self, examples: Sequence[Any], lengths: Sequence[int], start_length: int, ramp_steps: int, seed: int = 0
    ) -> None:
        if len(examples) != len(lengths) or not examples:
            raise ValueError(f"need one length per example and at least one example, got {len(examples)} "
                             f"example(s) and {len(lengths)} length(s)")
        order = sorted(range(len(examples)), key=lengths.__getitem__)
        self.examples = [examples[i] for i in order]
        self.lengths = [lengths[i] for i in order]
        self.start_length, self.ramp_steps = start_length, ramp_steps
        self.rng = random.Random(seed)

    def max_length(self, step: int) -> int:
        """The longest context admitted at ``step``."""
        longest = self.lengths[-1]
        if self.ramp_steps <= 0 or step >= self.ramp_steps:
            return longest
        return int(self.start_length + (longest - self.start_length) * step / self.ramp_steps)

    def batch(self, step: int, batch_size: int) -> list[Any]:
        """``batch_size`` examples drawn uniformly among those admitted at ``step``."""
        admitted = max(bisect.bisect_right(self.lengths, self.max_length(step)), 1)  # the shortest always is
        return [self.examples[self.rng.randrange(admitted)] for _ in range(batch_size)]


def train(
    model: Any,
    tokenizer: Any,
    curriculum: LengthCurriculum,
    k: int,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    encoder: KTokenEncoder | None = None,
    warmup_steps: int = 50,
    desc: str = "train",
    resume_dir: str | Path | None = None,
    save_every_minutes: float = 5.0,
    stop_after: int | None = None,
    deadline: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    answer_eos: bool = True,
    encoder_lr: float | None = None,
) -> list[float]:
    """Train every parameter of ``model`` and ``encoder`` that requires grad with AdamW.

    The learning rate warms up linearly for ``warmup_steps`` then follows a cosine to 0; gradients are
    clipped at norm 1. Wrap ``model`` with :func:`add_lora` first to train adapters only.

    With ``resume_dir``, the run is resumable: every ``save_every_minutes``, when it stops early and at the
    end, it saves its state (trainable weights, optimizer, schedule, sampling state, losses) to
    ``resume_dir/train_state.pt`` atomically, and a call with the same arguments continues from there. A
    run resumed any number of times takes the same steps as one run straight through.

    Args:
        stop_after: end this call after this many steps of it (the state is saved), or ``None``.
        deadline: end this call at the first step boundary after this ``time.time()``, or ``None``.
        autocast_dtype: e.g. ``torch.bfloat16``: run the forward under CPU/CUDA autocast; ``None``: off.
        answer_eos: label an end of sequence after each answer (see :func:`encode_training_batch`).
        encoder_lr: the encoder's peak learning rate (same schedule), or ``None`` for ``lr``: the encoder
            starts from scratch while the adapters nudge a trained model, so it may want a larger step.

    Returns:
        The loss of every step done so far (earlier runs' included): ``len(...) == steps`` once finished.

    Raises:
        ValueError: nothing to train, or a saved state of another run (other ``k``, ``steps`` or parameters).
    """
    params = _trainable(model, encoder)
    if not params:
        raise ValueError("nothing to train: no parameter of the model or encoder requires grad")
    optimizer = torch.optim.AdamW(_param_groups(params, lr, encoder_lr), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, warmup_steps, steps))
    state_path = Path(resume_dir) / TRAIN_STATE_FILE if resume_dir is not None else None
    losses: list[float] = []
    if state_path is not None and state_path.is_file():
        losses = _load_train_state(state_path, params, optimizer, schedule, curriculum, k, steps)
    model.train()
    if encoder is not None:
        encoder.train()
    device = next(iter(params.values())).device
    saved_at, first = time.monotonic(), len(losses)
    bar = tqdm(range(first, steps), desc=desc, initial=first, total=steps)
    for step in bar:
        batch = encode_training_batch(tokenizer, curriculum.batch(step, batch_size), answer_eos)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            loss = answer_loss(model, batch, k, encoder)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        stopping = (stop_after is not None and step + 1 - first >= stop_after) or (
            deadline is not None and time.time() >= deadline
        )
        if state_path is not None and (
            stopping or step + 1 == steps or time.monotonic() - saved_at >= 60 * save_every_minutes
        ):
            _save_train_state(state_path, params, optimizer, schedule, curriculum, k, steps, losses)
            saved_at = time.monotonic()
        if stopping:
            break
    bar.close()
    model.eval()
    if encoder is not None:
        encoder.eval()
    return losses


@dataclass(frozen=True)
class StageOptions:
    """How :func:`train_stage` trains: the :func:`train` arguments, LoRA's rank, the seed and the checkpointing.

    The single source of these defaults, also for the scripts' flags (:meth:`add_arguments`).

    Raises:
        ValueError: a count below 1 (``warmup_steps`` below 0), or a learning rate or save interval <= 0.
    """

    steps: int = 200
    batch_size: int = 2
    lr: float = 3e-4
    warmup_steps: int = 20
    lora_rank: int = 8
    seed: int = 0
    save_every_minutes: float = 5.0
    autocast_dtype: torch.dtype | None = None
    answer_eos: bool = True
    encoder_lr: float | None = None
    curriculum: float = 0.0
    init_adapter: str | None = None

    def __post_init__(self) -> None:
        counts = {"steps": self.steps, "batch_size": self.batch_size, "lora_rank": self.lora_rank}
        for name, value in counts.items():
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.warmup_steps < 0 or self.lr <= 0 or self.save_every_minutes <= 0:
            raise ValueError(f"need warmup_steps >= 0, lr > 0 and save_every_minutes > 0, got {self.warmup_steps}, "
                             f"{self.lr} and {self.save_every_minutes}")
        if self.encoder_lr is not None and self.encoder_lr <= 0:
            raise ValueError(f"encoder_lr must be > 0 (or None for lr), got {self.encoder_lr}")
        if not 0 <= self.curriculum <= 1:
            raise ValueError(f"curriculum is a share of the steps in [0, 1], got {self.curriculum}")

    @classmethod
    def add_arguments(cls, parser: Any) -> None:
        """Add the options' flags (``--steps``, ``--batch-size``, ``--lr``, ``--warmup``, ``--lora-rank``,
        ``--seed``, ``--save-every``, ``--bf16``, ``--encoder-lr``, ``--curriculum``) and ``--stop-after-minutes``
        to an argparse parser."""
        defaults = cls()
        parser.add_argument("--steps", type=int, default=defaults.steps, help="training steps of each stage")
        parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
        parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate")
        parser.add_argument("--warmup", type=int, default=defaults.warmup_steps, help="linear warm-up steps")
        parser.add_argument("--lora-rank", type=int, default=defaults.lora_rank)
        parser.add_argument("--seed", type=int, default=defaults.seed)
        parser.add_argument("--save-every", type=float, default=defaults.save_every_minutes,
                            help="minutes between checkpoints")
        parser.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast")
        parser.add_argument("--encoder-lr", type=float, default=defaults.encoder_lr,
                            help="the K-token encoder's peak learning rate (default: --lr)")
        parser.add_argument("--curriculum", type=float, default=defaults.curriculum, metavar="FRACTION",
                            help="share of the steps over which the longest admitted context grows from the "
                            "shortest training context to the longest (0: all lengths from the start)")
        parser.add_argument("--stop-after-minutes", type=float, default=None,
                            help="end this call cleanly after that many minutes (run it again to continue)")

    @classmethod
    def from_args(cls, args: Any, **changes: Any) -> "StageOptions":
        """The options of parsed :meth:`add_arguments` flags (``changes`` override fields)."""
        return cls(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                   lora_rank=args.lora_rank, seed=args.seed, save_every_minutes=args.save_every,
                   autocast_dtype=torch.bfloat16 if args.bf16 else None, encoder_lr=args.encoder_lr,
                   curriculum=args.curriculum, **changes)

    @staticmethod
    def deadline(args: Any) -> float | None:
        """The ``time.time()`` at which ``--stop-after-minutes`` ends this call, or ``None``."""
        return None if args.stop_after_minutes is None else time.time() + 60 * args.stop_after_minutes


def train_stage(
    base: Any,
    tokenizer: Any,
    examples: Sequence[QAExample],
    k: int,
    directory: str | Path,
    options: StageOptions,
    deadline: float | None = None,
) -> dict[str, Any] | None:
    """One resumable training stage: LoRA adapters on ``base`` (and at ``k > 1`` a K-token encoder) into ``directory``.

    A call continues where an earlier one stopped (``directory/train_state.pt``) and ends at ``deadline``
    (a ``time.time()``) or when done. Once done, the directory holds the checkpoint (:func:`save_checkpoint`
    at ``k > 1``, the LoRA adapter alone in ``lora/`` at ``k=1``) and ``done.json``; later calls return
    its summary at once. ``base`` is left without adapters in every case.

    Returns:
        The summary (``k``, ``steps``, ``train_minutes`` summed over the calls, ``losses``) once done, else ``None``.
    """
    directory = Path(directory)
    if (directory / DONE_FILE).is_file():
        return json.loads((directory / DONE_FILE).read_text())
    lengths = [len(ids) for ids in tokenizer([e.context for e in examples], add_special_tokens=False)["input_ids"]]
    curriculum = LengthCurriculum(examples, lengths, min(lengths), int(options.curriculum * options.steps),
                                  seed=options.seed)
    torch.manual_seed(options.seed)
    encoder = KTokenEncoder(base.get_input_embeddings().embedding_dim, k) if k > 1 else None
    model = _adapters(base, options)
    began = time.perf_counter()
    try:
        losses = train(model, tokenizer, curriculum, k, options.steps, options.batch_size, options.lr, encoder,
                       warmup_steps=options.warmup_steps, desc=f"LoRA{' + encoder' if encoder else ''} K={k}",
                       resume_dir=directory, save_every_minutes=options.save_every_minutes, deadline=deadline,
                       autocast_dtype=options.autocast_dtype, answer_eos=options.answer_eos,
                       encoder_lr=options.encoder_lr)
        with open(directory / RUNS_FILE, "a") as f:  # a resumed stage's wall time is the sum of its calls
            f.write(json.dumps({"minutes": (time.perf_counter() - began) / 60, "steps_done": len(losses)}) + "\n")
        if len(losses) < options.steps:
            return None
        if encoder is not None:
            save_checkpoint(directory, encoder, model)
        else:
            model.save_pretrained(directory / LORA_DIR, safe_serialization=True)
    finally:
        model.unload()  # the base model without adapters again
    runs = [json.loads(line) for line in (directory / RUNS_FILE).read_text().splitlines() if line.strip()]
    summary = {"k": k, "steps": options.steps, "train_minutes": sum(r["minutes"] for r in runs), "losses": losses}
    (directory / DONE_FILE).write_text(json.dumps(summary))
    return summary


def _adapters(base: Any, options: StageOptions) -> Any:
    """``base`` with trainable LoRA adapters: fresh ones, or a copy of ``options.init_adapter``'s (a PEFT folder).

    Raises:
        ValueError: ``init_adapter`` is not a PEFT adapter folder.
    """
    if options.init_adapter is None:
        return add_lora(base, rank=options.lora_rank, alpha=2 * options.lora_rank)
    from peft import PeftModel

    if not (Path(options.init_adapter) / "adapter_config.json").is_file():
        raise ValueError(f"init_adapter {options.init_adapter}: no adapter_config.json there (a PEFT adapter "
                         "folder, such as a finished k1 stage's lora/, is needed)")
    return PeftModel.from_pretrained(base, options.init_adapter, is_trainable=True)


def _param_groups(params: dict[str, Tensor], lr: float, encoder_lr: float | None) -> list[dict[str, Any]]:
    """The optimizer's groups: the model's parameters at ``lr``, the encoder's at ``encoder_lr`` (if set)."""
    encoder_names = {name for name in params if name.startswith("encoder.")}
    if encoder_lr is None or not encoder_names:
        return [{"params": list(params.values())}]
    return [{"params": [p for n, p in params.items() if n not in encoder_names]},
            {"params": [params[n] for n in params if n in encoder_names], "lr": encoder_lr}]


def _trainable(model: Any, encoder: KTokenEncoder | None) -> dict[str, Tensor]:
    """name -> parameter for everything that trains, the model's under ``model.``, the encoder's under ``encoder.``."""
    params = {f"model.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    if encoder is not None:
        params.update({f"encoder.{n}": p for n, p in encoder.named_parameters() if p.requires_grad})
    return params


def _save_train_state(
    path: Path, params: dict[str, Tensor], optimizer: Any, schedule: Any, curriculum: LengthCurriculum,
    k: int, steps: int, losses: list[float],
) -> None:
    """Write the training state to ``path`` under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    version, internal, gauss = curriculum.rng.getstate()
    state = {
        "k": k, "steps": steps, "losses": list(losses), "names": list(params),
        "weights": {name: p.detach().clone() for name, p in params.items()},
        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
        "rng": [version, list(internal), gauss],
    }
    temporary = path.with_name(path.name + ".partial")
    torch.save(state, temporary)
    os.replace(temporary, path)


def _load_train_state(
    path: Path, params: dict[str, Tensor], optimizer: Any, schedule: Any, curriculum: LengthCurriculum,
    k: int, steps: int,
) -> list[float]:
    """Restore a state saved by :func:`_save_train_state` into the given objects; returns its losses."""
    state = torch.load(path, weights_only=True)
    if (state["k"], state["steps"], state["names"]) != (k, steps, list(params)):
        raise ValueError(
            f"{path} holds a run with k={state['k']}, steps={state['steps']} and {len(state['names'])} trained "
            f"tensors, not k={k}, steps={steps} with {len(params)}; use another resume directory or remove it"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state["weights"][name])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    version, internal, gauss = state["rng"]
    curriculum.rng.setstate((version, tuple(internal), gauss))
    return list(state["losses"])


def _lr_factor(step: int, warmup_steps: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 0 at ``steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def accuracy(
    model: Any,
    tokenizer: Any,
    examples: Sequence[QAExample],
    k: int,
    encoder: KTokenEncoder | None = None,
    batch_size: int = 64,
) -> float:
    """Fraction of examples whose greedy answer (first generated word) equals the expected answer."""
    max_new = max(len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples) + 1
    correct = 0
    for start in tqdm(range(0, len(examples), batch_size), desc=f"eval K={k}", leave=False):
        chunk = examples[start : start + batch_size]
        answers = generate_text(
            model, tokenizer, [e.context for e in chunk], [e.question for e in chunk], k, encoder,
            max_new_tokens=max_new, do_sample=False,
        )
        correct += sum(a.strip() == e.answer for a, e in zip(answers, chunk))
    return correct / len(examples)


def add_lora(model: Any, rank: int = 8, alpha: int = 16, targets: Sequence[str] = LORA_TARGETS) -> Any:
    """Wrap ``model`` with PEFT LoRA adapters on ``targets`` (the base weights are frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(targets))
    return get_peft_model(model, config)


def save_checkpoint(directory: str | Path, encoder: KTokenEncoder, model: Any | None = None) -> Path:
    """Save ``encoder`` (and ``model``'s LoRA adapter, if it is a PEFT model) under ``directory``.

    Returns:
        The directory: ``encoder.safetensors`` plus ``lora/`` (PEFT's ``adapter_model.safetensors``).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: t.detach().contiguous() for name, t in encoder.state_dict().items()}
    save_file(state, directory / ENCODER_FILE, metadata={"config": json.dumps(encoder.config())})
    if model is not None and hasattr(model, "peft_config"):
        model.save_pretrained(directory / LORA_DIR, safe_serialization=True)
    return directory


def load_checkpoint(directory: str | Path, model: Any) -> tuple[KTokenEncoder, Any]:
    """Load an encoder saved by :func:`save_checkpoint`, and its LoRA adapter onto ``model`` if saved.

    Returns:
        (encoder, model): the encoder in eval mode, and ``model`` wrapped with the adapter (or as given).

    Raises:
        FileNotFoundError: no encoder checkpoint in ``directory``.
        ValueError: the encoder does not fit the model's embedding size.
    """
    from safetensors import safe_open

    path = Path(directory) / ENCODER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no K-token encoder checkpoint at {path}")
    with safe_open(path, framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    encoder = KTokenEncoder(**config)
    encoder.check_compatible(encoder.k, model.get_input_embeddings().embedding_dim)
    encoder.load_state_dict(load_file(path))
    if (Path(directory) / LORA_DIR).is_dir():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, Path(directory) / LORA_DIR)
    return encoder.eval(), model.eval()
