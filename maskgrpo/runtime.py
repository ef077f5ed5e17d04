"""What every training program shares, built on `accelerate`: devices, processes, mixed precision,
collectives, trackers, the run directory, checkpoints and stop signals.

Helpers, not a base class: each program's loop stays readable top to bottom and calls these.
Nothing distributed is written here by hand: accelerate owns the process group (gloo on CPUs,
NCCL on GPUs, FSDP and DeepSpeed from its config files), DDP wraps the trained module, and the
trackers (TensorBoard by default) are accelerate's.

The run directory contract, the same for `train`, `sft`, `train-vq` and `train-clip`:
`recipe.yaml` (the resolved recipe, YAML), `metrics.jsonl`, TensorBoard events under `tb/`,
`report.md` and plots, `checkpoint/` (atomic; what `--resume` reads), `model/` (the export).
Only the main process writes it.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import MaskGRPOError
from .utils import atomic_write_text

STATE_FILE = "trainer_state.pt"


def make_accelerator(device: str, mixed_precision: str = "no", report_to: list[str] | None = None, project_dir: Path | None = None) -> Any:
    """An `accelerate.Accelerator` for this process. Under `accelerate launch`/`torchrun` each
    process gets its rank's device; `device: cpu` keeps every process on the CPU (gloo).

    accelerate keeps one process-wide state; a single process that builds several runs in a row
    (tests, benchmarks) with different precision gets it reset, which a launched run never needs."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    from accelerate.utils import DistributedDataParallelKwargs

    trackers = [t for t in (report_to or []) if t != "wandb" or _wandb_available()]
    # find_unused_parameters: a micro-batch with no scored token leaves the vocabulary head unused
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(
        cpu=cpu, mixed_precision=mixed_precision, log_with=trackers or None, project_dir=str(project_dir) if project_dir else None, kwargs_handlers=[ddp]
    )


def _wandb_available() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise MaskGRPOError("train.report_to: 'wandb' needs the wandb package (pip install wandb)") from None
    return True


def local_share(total: int, accelerator: Any, what: str) -> range:
    """This process's contiguous share of `total` items (prompts, examples): disjoint and
    deterministic by rank. The total must divide by the process count."""
    world, rank = accelerator.num_processes, accelerator.process_index
    if total % world:
        raise MaskGRPOError(f"{what}: {total} do not split over {world} processes; use a multiple of {world}")
    size = total // world
    return range(rank * size, (rank + 1) * size)


def reduce_sum(accelerator: Any, value: float) -> float:
    """Sum of a Python number over processes (the number itself on one process)."""
    if accelerator.num_processes == 1:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.reduce(t, reduction="sum").item())


def gather_list(accelerator: Any, items: list[Any]) -> list[Any]:
    """Concatenation of every process's list, in rank order (any picklable items)."""
    if accelerator.num_processes == 1:
        return list(items)
    from accelerate.utils import gather_object

    return gather_object(list(items))


class StopSignal:
    """SIGINT/SIGTERM ask the loop to stop at the next step boundary (so the checkpoint is an
    exact one); a second signal interrupts at once. `requested()` agrees across processes, so no
    rank leaves while another waits in a collective."""

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator
        self.flag = False
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True

    def __enter__(self) -> "StopSignal":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def requested(self) -> bool:
        return reduce_sum(self.accelerator, float(self.flag)) > 0

    def after_step(self, step: int, total: int, save_every: int, save: Any) -> bool:
        """The end of every program's step: a checkpoint every `save_every` steps; True when a
        stop was asked before the last step (the loop breaks; the caller saves once more)."""
        if save_every and step % save_every == 0:
            save()
        return step < total and self.requested()


def stop_interrupted(accelerator: Any, checkpoint: Path, step: int) -> None:
    """After the final save of an interrupted run: close the trackers, say how to go on, and
    re-raise KeyboardInterrupt (the CLI exits 130)."""
    accelerator.end_training()
    if accelerator.is_main_process:
        print(f"interrupted: checkpoint at step {step} saved to {checkpoint}; continue with --resume")
    raise KeyboardInterrupt


class RunDirectory:
    """The run directory of one training program; writes happen on the main process only."""

    def __init__(self, path: str | Path, accelerator: Any):
        self.path = Path(path)
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    def prepare(self, recipe_yaml: str, resume: bool, overwrite: bool) -> None:
        """Refuse to wipe an earlier run; recover a checkpoint a crash left half-renamed; clear
        stale temporaries; write the resolved recipe."""
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            old = self.path / ".checkpoint.old"
            if old.is_dir() and not self.checkpoint.exists():
                old.rename(self.checkpoint)  # killed between the two renames of a save
            for stale in self.path.glob(".checkpoint.tmp*"):
                shutil.rmtree(stale, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        if resume and not (self.checkpoint / STATE_FILE).is_file():
            raise MaskGRPOError(f"--resume: no checkpoint in {self.checkpoint}")
        if not resume and not overwrite and self.checkpoint.exists():
            raise MaskGRPOError(f"{self.path}: holds the checkpoint of an earlier run; continue it with --resume or replace it with --overwrite")
        if resume:
            self._check_resumable(recipe_yaml)
        if self.is_main:
            atomic_write_text(self.path / "recipe.yaml", recipe_yaml)

    def _check_resumable(self, recipe_yaml: str) -> None:
        """`--resume` continues the run that is on disk: a changed setting that the checkpoint
        or the random draws depend on (group size, learning rate, model, seed, ...) is refused,
        naming the fields; only the length and the bookkeeping of the run may change."""
        import yaml

        saved_file = self.path / "recipe.yaml"
        if not saved_file.is_file():
            return
        saved, now = _flatten(yaml.safe_load(saved_file.read_text()) or {}), _flatten(yaml.safe_load(recipe_yaml) or {})
        changed = sorted(k for k in set(saved) | set(now) if saved.get(k, _ABSENT) != now.get(k, _ABSENT))
        unsafe = [k for k in changed if k not in SAFE_ON_RESUME]
        if unsafe:
            shown = ", ".join(f"{k} ({saved.get(k, 'unset')!r} -> {now.get(k, 'unset')!r})" for k in unsafe[:3])
            more = f" and {len(unsafe) - 3} more" if len(unsafe) > 3 else ""
            raise MaskGRPOError(
                f"--resume: the recipe changed since the checkpoint: {shown}{more}; resuming would not continue that run "
                f"(only {', '.join(sorted(SAFE_ON_RESUME))} may change); use --overwrite to start over"
            )
        if changed and self.is_main:
            print("resume: " + ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed) + " (allowed)")

    def save(self, modules: dict[str, torch.nn.Module], state: dict[str, Any]) -> None:
        """Atomic checkpoint: each module's weights as `<name>.safetensors` beside the trainer
        state (optimizer, scheduler, step, process count); a half-written checkpoint never
        replaces a good one. Every process calls it; the main one writes."""
        import safetensors.torch

        from .utils import atomic_directory

        self.accelerator.wait_for_everyone()
        if self.is_main:
            with atomic_directory(self.checkpoint) as tmp:
                for name, module in modules.items():
                    safetensors.torch.save_model(module, str(tmp / f"{name}.safetensors"))
                torch.save({**state, "world_size": self.accelerator.num_processes}, tmp / STATE_FILE)
        self.accelerator.wait_for_everyone()

    def load(self, modules: dict[str, torch.nn.Module]) -> dict[str, Any]:
        """The checkpoint's weights into `modules`; returns the trainer state (data only)."""
        import safetensors.torch

        if not (self.checkpoint / STATE_FILE).is_file():
            raise MaskGRPOError(f"--resume: no checkpoint in {self.checkpoint}")
        device = self.accelerator.device
        state = load_state(self.checkpoint / STATE_FILE, device)
        check_world_size(state, self.accelerator, self.checkpoint)
        for name, module in modules.items():
            safetensors.torch.load_model(module, str(self.checkpoint / f"{name}.safetensors"), device="cpu" if device.type == "cpu" else str(device))
        return state

    def resume(self, modules: dict[str, torch.nn.Module], optimizer: Any, scheduler: Any) -> tuple[dict[str, Any], int, list[dict[str, Any]]]:
        """`--resume`: the checkpoint into the modules, optimizer and scheduler; returns the
        state, its step and the metrics rows up to that step."""
        state = self.load(modules)
        optimizer.load_state_dict(state["opt"])
        scheduler.load_state_dict(state["sched"])
        return state, int(state["step"]), self.read_metrics(int(state["step"]))

    def read_metrics(self, up_to_step: int) -> list[dict[str, Any]]:
        """Rows of metrics.jsonl up to a step; a torn last line (a crash mid-write) is dropped."""
        path = self.path / "metrics.jsonl"
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return [r for r in rows if isinstance(r, dict) and r.get("step", math.inf) <= up_to_step]

    @contextmanager
    def metrics_log(self, rows: list[dict[str, Any]]) -> Iterator[Any]:
        """metrics.jsonl rewritten with `rows` (those kept on resume), then appended line by line;
        each row also goes to the trackers as scalars."""
        if not self.is_main:
            yield lambda row: None
            return
        path = self.path / "metrics.jsonl"
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
        with path.open("a") as f:

            def write(row: dict[str, Any]) -> None:
                f.write(json.dumps(row) + "\n")
                f.flush()
                scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
                if scalars:
                    self.accelerator.log(scalars, step=int(row["step"]))

            yield write


# What may change on --resume: how long the run goes on and what it logs; nothing the saved
# optimizer, the model or the random draws depend on.
SAFE_ON_RESUME = {
    f"{section}.{key}"
    for section in ("train", "sft")
    for key in ("steps", "eval_every", "save_every", "eval_batch_size", "report_to")
}
_ABSENT = object()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} for nested mappings; lists are compared whole."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def tensorboard_writer(accelerator: Any) -> Any | None:
    """The TensorBoard SummaryWriter when that tracker is on (for images and text), else None."""
    if not accelerator.is_main_process or "tensorboard" not in [t.name for t in accelerator.trackers]:
        return None
    return accelerator.get_tracker("tensorboard", unwrap=True)


def load_state(path: Path, device: torch.device) -> dict[str, Any]:
    """A trainer state saved with torch.save, loaded as data only: a crafted pickle that would
    run code on `--resume` is refused."""
    try:
        where = torch.device("cpu") if device.type == "cpu" else device  # gloo ranks report "cpu:N"
        return torch.load(path, map_location=where, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is the same user-facing problem
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MaskGRPOError(f"--resume: {path} is not a plain trainer state (refused to load it: {reason[:200]})") from None


def check_world_size(state: dict[str, Any], accelerator: Any, source: Path) -> None:
    saved = int(state.get("world_size", 1))
    if saved != accelerator.num_processes:
        raise MaskGRPOError(
            f"--resume: {source} was written by {saved} process(es), this run has {accelerator.num_processes}; "
            f"resume with the same process count"
        )


def lr_lambda(warmup: int, total: int, schedule: str = "cosine"):
    """The learning-rate multiplier of every program: linear warm-up, then constant or cosine."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f
