"""Generate completions for a list of prompts and score them: shared by SFT, GRPO and eval."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .backbones.base import Backbone
from .data import encode_prompts
from .modality import ImageModality, Modality
from .samplers.base import Rollout
from .tasks.base import Example
from .tokenizers.base import TextTokenizer, decode_completion
from .utils import RowGenerators


@torch.no_grad()
def rollouts(
    backbone: Backbone,
    tokenizer: TextTokenizer,
    sampler,
    prompts: list[str],
    batch_size: int,
    seed: int,
    device: torch.device | str,
    row_ids: list[int] | None = None,
) -> Iterator[Rollout]:
    """Batched rollouts in eval mode (training mode restored after), deterministic for a seed.
    Prompt i draws from its own generator, keyed by `row_ids[i]` (default i): its sample does
    not depend on the batch size or on which process generates it."""
    ids_of = list(range(len(prompts))) if row_ids is None else list(row_ids)
    was_training = getattr(backbone, "training", False)
    if hasattr(backbone, "eval"):
        backbone.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            ids, attn = encode_prompts(tokenizer, prompts[start : start + batch_size], device)
            generators = RowGenerators.seeded(seed, rows=ids_of[start : start + batch_size])
            yield sampler.sample(backbone, ids, generators, attention_mask=attn)
    finally:
        if was_training:
            backbone.train()


def generate(
    backbone: Backbone,
    tokenizer: TextTokenizer,
    sampler,
    prompts: list[str],
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
    row_ids: list[int] | None = None,
) -> list[str]:
    """Completions as text."""
    return [
        decode_completion(tokenizer, row.tolist())
        for rollout in rollouts(backbone, tokenizer, sampler, prompts, batch_size, seed, device, row_ids)
        for row in rollout.completion
    ]


@dataclass
class EvalResult:
    accuracy: float
    records: list[dict]


def evaluate_accuracy(
    backbone: Backbone,
    tokenizer: TextTokenizer,
    sampler,
    examples: list[Example],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    row_ids: list[int] | None = None,
) -> EvalResult:
    """Held-out accuracy, judged by the same math metric the `math_accuracy` reward uses."""
    from .metrics.math import judge

    completions = generate(backbone, tokenizer, sampler, [e.prompt for e in examples], batch_size, 0, device, row_ids)
    records = []
    for ex, completion in zip(examples, completions):
        verdict = judge(completion, ex.answer)
        records.append(
            {"prompt": ex.prompt, "answer": ex.answer, "completion": completion, "extracted": verdict.extracted, "correct": verdict.correct}
        )
    accuracy = sum(r["correct"] for r in records) / len(records) if records else float("nan")
    return EvalResult(accuracy, records)


@torch.no_grad()
def generate_images(
    backbone: Backbone,
    modality: ImageModality,
    sampler,
    prompts: list[str],
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    row_ids: list[int] | None = None,
) -> list:
    """PIL images for prompts: sampled code grids, decoded by the run's image modality."""
    images: list = []
    for rollout in rollouts(backbone, modality.tokenizer, sampler, prompts, batch_size, seed, device, row_ids):
        images += modality.decode(rollout.completion)
    return images


def evaluate_images(
    backbone: Backbone,
    modality: ImageModality,
    sampler,
    examples: list[Example],
    metric,
    images_per_prompt: int = 2,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    row_ids: list[int] | None = None,
) -> tuple[dict, list, list]:
    """A GenEval-style `metric` (built from the recipe: shapes detector, COCO detector, ...) on
    generated images: (metrics, images, records)."""
    rows = [e.columns["metadata"] for e in examples for _ in range(images_per_prompt)]
    images = generate_images(backbone, modality, sampler, [r["prompt"] for r in rows], batch_size, 0, device, row_ids)
    metric.reset()
    metric.update({"images": images, "metadata": rows})
    return metric.compute(), images, metric.records


def evaluate_sharded(
    accelerator,
    backbone: Backbone,
    modality: Modality,
    sampler,
    examples: list[Example],
    metric=None,
    batch_size: int = 128,
    images_per_prompt: int = 2,
) -> tuple[float, list[dict], list]:
    """The in-training evaluation of every program, on any number of processes: each process
    takes every world-th example (row ids stay global, so samples do not depend on the process
    count) and the records are gathered. Returns (score, records, up to 48 images on the main
    process): held-out accuracy for text, the metric's GenEval-style score for images."""
    from .metrics.geneval import aggregate
    from .runtime import gather_list

    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    shard = list(range(rank, len(examples), world))
    mine = [examples[i] for i in shard]
    with accelerator.autocast():
        if modality.name == "text":
            records = gather_list(accelerator, evaluate_accuracy(backbone, modality.tokenizer, sampler, mine, batch_size, device, row_ids=shard).records)
            return sum(r["correct"] for r in records) / len(records), records, []
        row_ids = [i * images_per_prompt + k for i in shard for k in range(images_per_prompt)]
        _, images, records = evaluate_images(backbone, modality, sampler, mine, metric, images_per_prompt, batch_size, device, row_ids)
    records, images = gather_list(accelerator, records), gather_list(accelerator, images[:48])
    return aggregate(records)["overall"], records, images
