"""Image rollouts and image GRPO steps on a randomly initialised in-house transformer whose
vocabulary is the shapes world's word vocabulary followed by a VQ codebook (MMaDA-style), at
64 image tokens (8x8, the shapes world) and 256 (16x16).

1. Sampler throughput of `maskgit` and `emerge` (images/s, with and without CFG), against the
   cost of the same number of plain backbone forward passes on the batch the sampler feeds the
   backbone (2x the images with CFG: both halves go in one batch), measured in the same process,
   so the sampler's own overhead is the ratio's excess over 1; and emerge / maskgit.
2. One GRPO step at 256 image tokens, by the trainer itself (`GRPOTrainer.train_step` on
   `recipes/shapes-grpo[-maskgit].yaml` with the backbone and image tokenizer replaced by random
   ones of the chosen sizes): rollout of G images per prompt, VQ decode, reward, old (and, with
   beta > 0, reference) log-probs for the mu masked views, mu inner updates with backward and
   AdamW. The phases are timed by wrapping the trainer's methods, so the step that runs is the
   library's. Each step measurement runs in a fresh process: on a CPU the peak is the rise of
   ru_maxrss (a process-wide high-water mark) over the built trainer; on a GPU it is
   torch.cuda.max_memory_allocated over what was allocated before the step.

    python -m bench.image                    # writes bench/results/image.json
    python -m bench.image --quick            # smoke sizes, about 30 s on one thread
    python -m bench.image --device cuda      # on a GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .common import best_of, save, table

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"emerge": ROOT / "recipes" / "shapes-grpo.yaml", "maskgit": ROOT / "recipes" / "shapes-grpo-maskgit.yaml"}
PROMPT_SLOTS = 16  # room for the longest shapes prompt (the shapes policy uses 16 + 64)
VQ_DOWNSAMPLE = 4  # the shapes VQ model (3 blocks): a 16x16 grid decodes to 64x64 pixels


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    def run() -> None:
        fn()
        _sync(device)

    return best_of(run, repeats)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# -- 1. sampler throughput --------------------------------------------------------------------
def sampler_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    from maskgrpo.components import build_backbone, build_sampler, build_tokenizer
    from maskgrpo.data import encode_prompts
    from maskgrpo.registry import tasks
    from maskgrpo.samplers.base import all_mask_start

    tokenizer = build_tokenizer({"type": "word"})
    image_tokenizer = build_tokenizer({"type": "vq", "num_vq_embeddings": args.codebook})
    rows = []
    for n in args.tokens:
        side = int(n**0.5)
        torch.manual_seed(0)
        backbone = build_backbone(
            {"type": "transformer", "max_length": PROMPT_SLOTS + n, "d_model": args.d_model, "n_layers": args.layers, "n_heads": args.heads},
            tokenizer,
            image_tokenizer,
        ).to(device).eval()
        task = tasks.build({"type": "shapes", "size": side * VQ_DOWNSAMPLE})
        prompts = [task.train_example(i).prompt for i in range(args.prompts) for _ in range(args.group)]
        ids, attn = encode_prompts(tokenizer, prompts, device)
        for cfg in (0.0, args.cfg):
            x, a, _ = all_mask_start(ids, attn, n, backbone.mask_token_id)
            if cfg:  # guided_logits sends conditional and unconditional halves in one batch
                x, a = torch.cat([x, x]), torch.cat([a, a])

            @torch.no_grad()
            def forwards(backbone: Any = backbone, x: torch.Tensor = x, a: torch.Tensor = a) -> None:
                for _ in range(args.steps):
                    backbone(x, a)

            bare = _timed(forwards, device, args.repeats)
            seconds = {}
            for name in ("maskgit", "emerge"):
                sampler = build_sampler({"type": name, "image_tokens": n, "steps": args.steps, "cfg_scale": cfg}, tokenizer, image_tokenizer)
                # a CPU generator, as the trainer uses (make_generator)
                def rollout(sampler: Any = sampler, backbone: Any = backbone, ids: torch.Tensor = ids, attn: torch.Tensor = attn) -> None:
                    sampler.sample(backbone, ids, torch.Generator().manual_seed(0), attention_mask=attn)

                seconds[name] = _timed(rollout, device, args.repeats)
            for name, s in seconds.items():
                rows.append(
                    {
                        "tokens": f"{n} ({side}x{side})",
                        "sampler": name,
                        "cfg": cfg,
                        "images": len(prompts),
                        "steps": args.steps,
                        "images/s": len(prompts) / s,
                        "sampler s": s,
                        "forwards s": bare,
                        "sampler/forwards": s / bare,
                        "emerge/maskgit": seconds["emerge"] / seconds["maskgit"] if name == "emerge" else "",
                    }
                )
            print(f"  sampler {n} tokens, cfg {cfg}: done", flush=True)
    return rows


# -- 2. one GRPO step (child process) ---------------------------------------------------------
PHASES = {
    # trainer attribute -> phase; a call inside another timed call counts for the outer one only
    "sampler.sample": "rollout",
    "modality.decode": "vq decode",
    "rewards.score": "reward",
    "estimator.masked_view": "masks",
    "_logprobs": "old logp",  # outside an inner update or the reference: the old policy's
    "_ref_logprobs": "ref logp",
    "_inner_update": "inner updates",
}


def _instrument(trainer: Any, device: torch.device, into: dict[str, float]) -> None:
    """Wrap the trainer's methods (instance attributes, the class is untouched) with timers."""
    depth = [0]
    for attr, phase in PHASES.items():
        owner_path, _, name = attr.rpartition(".")
        owner = trainer
        for part in filter(None, owner_path.split(".")):
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def wrapped(*a: Any, _original: Callable = original, _phase: str = phase, **k: Any) -> Any:
            if depth[0]:
                return _original(*a, **k)
            depth[0] += 1
            _sync(device)
            start = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                _sync(device)
                into[_phase] = into.get(_phase, 0.0) + time.perf_counter() - start
                depth[0] -= 1

        setattr(owner, name, wrapped)


def step_child(spec: dict[str, Any]) -> dict[str, Any]:
    from maskgrpo.recipe import load_recipe
    from maskgrpo.trainer import GRPOTrainer

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    n, side = spec["tokens"], int(spec["tokens"] ** 0.5)
    backbone = {"type": "transformer", "max_length": PROMPT_SLOTS + n, "d_model": spec["d_model"], "n_layers": spec["layers"], "n_heads": spec["heads"]}
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"output_dir={tmp}/run",
            f"backbone={json.dumps(backbone)}",
            "tokenizer=word",
            f"image_tokenizer={json.dumps({'type': 'vq', 'num_vq_embeddings': spec['codebook']})}",
            f"task.size={side * VQ_DOWNSAMPLE}",
            f"sampler.image_tokens={n}",
            f"sampler.steps={spec['steps']}",
            f"sampler.cfg_scale={spec['cfg']}",
            f"grpo.group_size={spec['group']}",
            f"grpo.num_iterations={spec['mu']}",
            f"grpo.beta={spec['beta']}",
            f"train.prompts_per_step={spec['prompts']}",
            f"train.device={spec['device']}",
        ]
        trainer = GRPOTrainer(load_recipe(RECIPES[spec["sampler"]], overrides), progress=False)
        # Load what the reward imports lazily, so the peak below is the step's, not an import's.
        example = trainer.task.train_example(0)
        trainer.rewards.score([example.prompt], [example.columns["image"]], {"metadata": [example.columns["metadata"]], "answer": [""]})
        phases: dict[str, float] = {}
        _instrument(trainer, device, phases)
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) / 2**20
        else:
            base = _rss_mb()
        best: dict[str, float] | None = None
        for step in range(spec["repeats"] + 1):  # the first is the warm-up (and allocates AdamW's state)
            phases.clear()
            start = time.perf_counter()
            trainer.train_step(step)
            _sync(device)
            total = time.perf_counter() - start
            if step and (best is None or total < best["step s"]):
                best = {"step s": total, **{f"{p} s": phases.get(p, 0.0) for p in dict.fromkeys(PHASES.values())}}
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb()
    assert best is not None
    best["other s"] = best["step s"] - sum(v for k, v in best.items() if k != "step s")
    return {**best, "peak MB": peak - base, "params M": sum(p.numel() for p in trainer.policy.parameters()) / 1e6}


def step_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    rows = []
    configs = [("emerge", 0.0), ("maskgit", 0.0)] + ([("emerge", args.beta)] if args.beta > 0 else [])
    for n in args.step_tokens:
        for sampler, beta in configs:
            spec = {
                "tokens": n, "sampler": sampler, "beta": beta, "device": str(device), "threads": torch.get_num_threads(),
                "d_model": args.d_model, "layers": args.layers, "heads": args.heads, "codebook": args.codebook,
                "steps": args.steps, "cfg": args.cfg, "prompts": args.prompts, "group": args.group, "mu": args.mu,
                "repeats": args.step_repeats,
            }  # fmt: skip
            out = subprocess.run([sys.executable, "-m", "bench.image", "--child", json.dumps(spec)], capture_output=True, text=True, cwd=ROOT, check=False)
            if out.returncode:
                raise SystemExit(f"step child failed ({sampler}, {n} tokens):\n{out.stderr[-3000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"tokens": n, "sampler": sampler, "beta": beta, "batch": f"{args.prompts}x{args.group}", "mu": args.mu, **r})
            print(f"  step {sampler} beta {beta}, {n} tokens: done", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke sizes: d_model 32, 1 layer, 2 prompts x G 2, 4 steps, no repeats")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--codebook", type=int, default=512, help="VQ codes after the word vocabulary (the shapes VQ model has 512)")
    p.add_argument("--tokens", type=int, nargs="+", default=[64, 256], help="image tokens for the sampler table (squares)")
    p.add_argument("--step-tokens", type=int, nargs="+", default=[256], help="image tokens for the GRPO step table")
    p.add_argument("--steps", type=int, default=12, help="sampler steps (RL rollouts: 12)")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--prompts", type=int, default=4, help="prompts per step (recipes/shapes-grpo.yaml: 4)")
    p.add_argument("--group", type=int, default=8, help="G (recipes/shapes-grpo.yaml: 8)")
    p.add_argument("--mu", type=int, default=2, help="inner iterations (recipes/shapes-grpo.yaml: 2)")
    p.add_argument("--beta", type=float, default=0.01, help="also time an emerge step with this KL weight (a reference model); 0: skip")
    p.add_argument("--repeats", type=int, default=3, help="timed sampler calls after a warm-up (the minimum is kept)")
    p.add_argument("--step-repeats", type=int, default=2, help="timed GRPO steps after a warm-up step")
    args = p.parse_args()
    if args.quick:
        args.d_model, args.layers, args.heads, args.steps = 32, 1, 2, 4
        args.prompts, args.group, args.repeats, args.step_repeats, args.beta = 2, 2, 1, 1, 0.0
    for n in {*args.tokens, *args.step_tokens}:
        if int(n**0.5) ** 2 != n:
            raise SystemExit(f"--tokens: {n} is not a square grid")
    from maskgrpo.utils import resolve_device

    device = resolve_device(args.device)
    memory = "torch.cuda.max_memory_allocated - allocated before the step" if device.type == "cuda" else "ru_maxrss rise over the built trainer (fresh process)"
    print(f"device {device}, {torch.get_num_threads()} threads; d_model {args.d_model}, {args.layers} layers, codebook {args.codebook}", flush=True)
    samplers = sampler_rows(args, device)
    steps = step_rows(args, device)

    print(f"\nsampler throughput ({args.steps} steps; forwards = the same number of plain backbone passes on the batch the sampler sends)")
    print(table(samplers, list(samplers[0])))
    print(f"\nGRPO step ({args.prompts} prompts x G {args.group}, mu {args.mu}, {args.steps} sampler steps, CFG {args.cfg}; best of {args.step_repeats}; {steps[0]['params M']:.2f} M parameters at {steps[0]['tokens']} tokens; peak: {memory})")
    cols = ["tokens", "sampler", "beta", "batch", "mu", "step s", *(f"{p} s" for p in dict.fromkeys(PHASES.values())), "other s", "peak MB"]
    print(table(steps, cols))
    name = "image-quick" if args.quick else "image"
    print(f"results: {save(name, {'config': vars(args), 'device': str(device), 'memory_measure': memory, 'samplers': samplers, 'steps': steps})}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(step_child(json.loads(sys.argv[2]))))
    else:
        main()
