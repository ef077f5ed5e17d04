"""A recipe's plan: its batch split over processes, the checks that refuse it, its workload.

Batch arithmetic (GRPO). P processes, p = `train.prompts_per_step` (global), G = group size:
each process rolls out R = p·G/P rows (whole groups: p must divide by P). A = `optim.grad_accum`
micro-batches of ceil(R·k/A) rows make one optimizer step, where k = 1, except for the `trace`
estimator, whose masked view stacks k rows per sequence (k = the number of step groups with
`schedule: all`, ceil(groups/mu) with `cycle`). Each of the mu = `grpo.num_iterations` inner
iterations is one optimizer step, so a rollout batch makes mu optimizer steps.

SFT: R = `sft.batch_size`/P rows in one micro-batch, no rollout, every weight trains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from ..errors import MaskGRPOError
from .memory import Workload, estimate_memory
from .parallel import Parallel, _parallel
from .report import _memory_lines, _verdict
from .shapes import ModelShape, _codebook, recipe_model_shape

PAPER_PROMPT_TOKENS = 256  # the paper's prompt budget, assumed where the backbone has no max_length


def _options(registry: Any, spec: Any, where: str) -> tuple[str, dict[str, Any]]:
    """A component's type and all its options, defaults included (nothing is built)."""
    flat = registry.expand(spec, where=where)
    entry = registry.get(flat["type"], where)
    model = entry.params.model_validate({k: v for k, v in flat.items() if k != "type"})
    return flat["type"], {**{k: getattr(model, k) for k in type(model).model_fields}, **(model.model_extra or {})}


def _sampler(spec: Any, where: str) -> dict[str, Any]:
    """gen_length, the positions projected per step, step count, guidance and sampling."""
    from ..registry import samplers

    _, o = _options(samplers, spec, where)
    image = "image_tokens" in o
    gen = int(o["image_tokens"] if image else o.get("gen_length", 0))
    return {
        "gen_length": gen,
        "block_length": gen if image else int(o.get("block_length") or gen),
        "steps": int(o.get("steps") or gen),
        "cfg": float(o.get("cfg_scale") or 0) > 0,
        "sampling": float(o.get("temperature", 0) or 0) > 0,
        "codebook_size": o.get("codebook_size") if image and "codebook_size" in (spec if isinstance(spec, dict) else {}) else None,
        "image": image,
    }


@dataclass
class Plan:
    """What `check` prints: the batch lines, the memory lines, the fit verdicts."""

    batch: list[str]
    memory: list[str]
    verdicts: list[str]

    def lines(self) -> list[str]:
        return self.batch + self.memory + self.verdicts


def _split(recipe: Any, processes: int) -> tuple[int, int]:
    """(rows per process, global rows); refuses batches that do not split into whole groups."""
    if recipe.kind == "sft":
        batch = recipe.sft.batch_size
        if batch % processes:
            raise MaskGRPOError(f"sft.batch_size: {batch} examples do not split over {processes} processes; use a multiple of {processes}")
        return batch // processes, batch
    prompts, G = recipe.train.prompts_per_step, recipe.grpo.group_size
    if prompts % processes:
        raise MaskGRPOError(f"train.prompts_per_step: {prompts} prompts do not split over {processes} processes; use a multiple of {processes}")
    rows = prompts * G // processes
    accum = recipe.optim.grad_accum
    if accum > rows:
        raise MaskGRPOError(
            f"optim.grad_accum: {accum} micro-batches but only {rows} rollout rows per process ({prompts} prompts x G {G} / {processes}); use grad_accum <= {rows}"
        )
    return rows, prompts * G


def _view_rows(recipe: Any, steps: int) -> tuple[int, str]:
    """k, the masked rows per sequence in one inner iteration, and a note for trace."""
    from ..registry import estimators

    if recipe.estimator is None:
        return 1, ""
    kind, o = _options(estimators, recipe.estimator, "estimator")
    if kind != "trace":
        return 1, ""
    mu = recipe.grpo.num_iterations
    shrink = o.get("shrink") or math.ceil(steps / mu)
    groups = math.ceil(steps / shrink)
    if o.get("schedule", "all") == "all":
        return groups, f"trace (schedule: all) stacks {groups} step groups per sequence: loss rows x {groups}"
    k = math.ceil(groups / mu) if groups > mu else 1
    return k, f"trace (schedule: cycle) scores {groups} step groups over the {mu} iterations: loss rows x {k}"


def plan_recipe(recipe: Any, num_processes: int | None = None, prompt_length: int | None = None) -> Plan:
    """The batch plan and memory estimate of a grpo or sft recipe; raises MaskGRPOError (one line
    saying how to fix it) on settings that cannot run."""
    grpo = recipe.kind == "grpo"
    par, source = _parallel(recipe, num_processes)
    rows, total = _split(recipe, par.processes)
    sampler = _sampler(recipe.sampler, "sampler")
    L = sampler["gen_length"]
    k, trace_note = _view_rows(recipe, sampler["steps"]) if grpo else (1, "")
    accum = recipe.optim.grad_accum if grpo else 1

    batch = [f"batch plan ({par.describe()}; {source}):"]
    if grpo:
        prompts, G, mu = recipe.train.prompts_per_step, recipe.grpo.group_size, recipe.grpo.num_iterations
        micro = math.ceil(rows * k / accum)
        batch += [
            f"  global prompts per step    {prompts} (train.prompts_per_step), group size G {G}: {total} completions",
            f"  rollout rows per process   {rows} = {prompts} x {G} / {par.processes}",
            f"  micro-batches              {accum} (optim.grad_accum) of {micro} loss rows" + (f" ({rows} x {k} / {accum})" if k > 1 else ""),
            f"  inner iterations mu        {mu} (grpo.num_iterations)",
            f"  optimizer steps            {mu} per rollout batch (one per inner iteration), {mu * recipe.train.steps} in the run",
        ]
        if trace_note:
            batch.append(f"  note: {trace_note}")
        if (rows * k) % accum:
            used = math.ceil(rows * k / micro)
            batch.append(f"  note: {rows * k} loss rows do not split evenly: micro-batches of {micro}, {used} of them (not {accum})")
    else:
        batch += [
            f"  global batch               {total} (sft.batch_size)",
            f"  rows per process           {rows} = {total} / {par.processes}, one micro-batch",
            f"  optimizer steps            {recipe.sft.steps}",
        ]
    if par.mixed_precision and par.mixed_precision not in ("no", recipe.train.mixed_precision):
        batch.append(f"  note: the accelerate config says mixed_precision {par.mixed_precision}, the recipe {recipe.train.mixed_precision}: the recipe's applies (the trainer passes it to Accelerator)")

    shape, origin = recipe_model_shape(recipe)
    if shape is None:
        return Plan(batch, [f"memory per process: {origin}"], [])
    if prompt_length is None:
        assumed = shape.max_length is None or shape.max_length > PAPER_PROMPT_TOKENS + L
        prompt_length = PAPER_PROMPT_TOKENS if assumed else shape.max_length - L
        prompt_note = f"prompt {prompt_length} tokens assumed (--prompt-length)" if assumed else f"prompt up to {prompt_length} tokens (max_length {shape.max_length} - {L})"
    else:
        prompt_note = f"prompt {prompt_length} tokens (--prompt-length)"
    if shape.max_length is not None and prompt_length + L > shape.max_length:
        raise MaskGRPOError(
            f"sampler: {prompt_length} prompt + {L} completion tokens exceed the backbone's max_length {shape.max_length}; shorten gen_length or the prompts"
        )
    if prompt_length < 1:
        raise MaskGRPOError(f"sampler.gen_length: {L} completion tokens fill the backbone's max_length {shape.max_length}; no room for a prompt")

    work = _workload(recipe, shape, par, rows, k, prompt_length, sampler)
    est = estimate_memory(shape, work)
    memory = _memory_lines(recipe, shape, work, est, origin, prompt_note)
    verdicts: list[str] = []
    if str((recipe.train if grpo else recipe.sft).device) != "cpu":  # a GPU recipe: does it fit on 1 and on 8?
        named = par.processes > 1 or bool(getattr(recipe.train if grpo else recipe.sft, "accelerate_config", None))
        for n in sorted({1, 8, par.processes}):
            alt = replace(par, processes=n, engine=par.engine if named else "DDP")
            note = "" if named else "; assumed: the recipe names no accelerate config"
            what = "one 80 GB GPU" if n == 1 else f"{n} x 80 GB GPUs ({alt.describe()}{note})"
            try:
                rows_n, _ = _split(recipe, n)
            except MaskGRPOError as err:
                verdicts.append(f"fits {what}: cannot run: {err}")
                continue
            peak = estimate_memory(shape, replace(work, rows=rows_n, processes=n)).peak
            verdicts.append(_verdict(f"fits {what}", peak, " per process" if n > 1 else ""))
    return Plan(batch, memory, verdicts)


def _workload(recipe: Any, shape: ModelShape, par: Parallel, rows: int, k: int, prompt_length: int, sampler: dict[str, Any]) -> Workload:
    grpo, t = recipe.kind == "grpo", recipe.train
    lora = recipe.lora if grpo else None  # sft trains every weight
    sampled = sampler["codebook_size"] or (_codebook(recipe) if sampler["image"] else None)
    ev: dict[str, Any] = {"eval_rows": 0}
    if grpo and _evaluates(recipe):
        es = _sampler(recipe.eval_sampler, "eval_sampler") if recipe.eval_sampler is not None else {**sampler, "sampling": sampler["image"]}
        ev = {"eval_rows": t.eval_batch_size, "eval_block_length": es["block_length"], "eval_cfg": es["cfg"], "eval_sampling": es["sampling"]}
    return Workload(
        rows=rows,
        prompt_length=prompt_length,
        gen_length=sampler["gen_length"],
        block_length=sampler["block_length"],
        micro_batches=recipe.optim.grad_accum if grpo else 1,
        view_rows=k,
        lora_r=lora.r if lora else None,
        lora_targets=lora.target_modules if lora else "all-linear",
        mixed_precision=t.mixed_precision,
        gradient_checkpointing=t.gradient_checkpointing or bool(_backbone_option(recipe, "gradient_checkpointing")),
        shard_stage=par.shard_stage,
        processes=par.processes,
        offload_optimizer=par.offload_optimizer,
        offload_params=par.offload_params,
        reference=grpo and (recipe.grpo.beta > 0 or recipe.grpo.monitor_kl),
        cfg=sampler["cfg"],
        sampling=sampler["sampling"],
        sampled_width=sampled,
        rollout=grpo,
        **ev,
    )


def _evaluates(recipe: Any) -> bool:
    """Does the run evaluate (before and after at least)? Only if its task has eval data."""
    from ..registry import tasks

    try:
        return bool(tasks.build(recipe.task, where="task").eval_examples())
    except Exception:  # a task that cannot be read here is the check's business, not the planner's
        return True


def _backbone_option(recipe: Any, name: str) -> Any:
    from ..registry import backbones

    return backbones.expand(recipe.backbone, where="backbone").get(name)
