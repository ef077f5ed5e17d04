"""Scale-out costs on this machine, in one command:

1. Communication overhead: mean GRPO step time of `recipes/arith-grpo.yaml` on 1 process with 2
   threads against 2 processes with 1 thread each (gloo, `configs/accelerate/cpu-2proc.yaml`), on
   the same global batch. The ratio is what splitting the batch over processes costs or saves.
2. Peak memory of one GRPO step (rollout, old log-probs, loss, AdamW step) of a mid-size model
   (d 512 x 8 layers, vocabulary 32k, completion 256) as is, with LoRA, bf16 autocast and gradient
   checkpointing, each in a fresh process (peak RSS above the process's RSS before the model is
   built), beside the planner's estimate (`maskgrpo.planner.estimate_peak_bytes`).

    python -m bench.scale                 # both parts (about 5 minutes here)
    python -m bench.scale --skip-timing   # memory only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MID = {"vocab": 32000, "d_model": 512, "n_layers": 8, "n_heads": 8, "prompt": 32, "gen": 256, "block": 32, "rows": 4}
CONFIGS = {
    "full fp32": {},
    "LoRA r 8": {"lora": True},
    "bf16": {"precision": "bf16"},
    "checkpointing": {"checkpointing": True},
    "LoRA + bf16 + checkpointing": {"lora": True, "precision": "bf16", "checkpointing": True},
}
LORA_TARGETS = ["qkv", "proj", "fc1", "fc2"]


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one_step(config: dict) -> dict:
    """Runs in its own process: one GRPO step of the mid-size model; peak RSS above baseline."""
    import torch

    from maskgrpo.backbones.base import TokenScorer
    from maskgrpo.backbones.transformer import MaskedTransformer
    from maskgrpo.grpo import grpo_token_loss
    from maskgrpo.recipe import LoraConfig
    from maskgrpo.registry import estimators
    from maskgrpo.runtime import make_accelerator
    from maskgrpo.samplers.low_confidence import LowConfidenceSampler
    from maskgrpo.policy import apply_lora
    from maskgrpo.utils import RowGenerators

    torch.manual_seed(0)
    baseline = rss_bytes()
    m = MID
    acc = make_accelerator("cpu", config.get("precision", "no"), [], None)
    model = MaskedTransformer(m["vocab"], 1, max_length=m["prompt"] + m["gen"], d_model=m["d_model"], n_layers=m["n_layers"], n_heads=m["n_heads"])
    if config.get("lora"):
        apply_lora(model, LoraConfig(r=8, alpha=16, target_modules=LORA_TARGETS))
    if config.get("checkpointing"):
        model.gradient_checkpointing_enable()
    sampler = LowConfidenceSampler(gen_length=m["gen"], block_length=m["block"], steps=m["gen"] // m["block"], temperature=1.0)
    prompt = torch.randint(2, m["vocab"], (m["rows"], m["prompt"]), generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    model.eval()
    with torch.no_grad(), acc.autocast():
        rollout = sampler.sample(model, prompt, RowGenerators.seeded(0, rows=range(m["rows"])))
    view = estimators.build("fading_out").masked_view(rollout, 0, 1, 0, 1)
    scorer = TokenScorer(model)
    trained, opt = acc.prepare(scorer, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4))
    model.train()
    with torch.no_grad(), acc.autocast():
        old = scorer(view.tokens, rollout.tokens, view.loss_mask, view.attention_mask)
    advantages = torch.randn(m["rows"])[view.loss_mask.nonzero()[:, 0]]
    with acc.autocast():
        logp = trained(view.tokens, rollout.tokens, view.loss_mask, view.attention_mask)
        loss = grpo_token_loss(logp, old, advantages, 0.2, 0.2).loss.mean()
    acc.backward(loss)
    opt.step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"measured": peak - baseline, "seconds": time.perf_counter() - started, "params": sum(p.numel() for p in model.parameters())}


def estimate(config: dict) -> int:
    from maskgrpo.planner import estimate_peak_bytes, transformer_shape

    m = MID
    shape = transformer_shape(m["vocab"], m["d_model"], m["n_layers"], m["n_heads"], 4.0, m["prompt"] + m["gen"], name="mid")
    return estimate_peak_bytes(
        shape,
        rows=m["rows"],
        prompt_length=m["prompt"],
        gen_length=m["gen"],
        block_length=m["block"],
        lora_r=8 if config.get("lora") else None,
        lora_targets=LORA_TARGETS,
        mixed_precision=config.get("precision", "no"),
        gradient_checkpointing=bool(config.get("checkpointing")),
        sampling=True,
    )


def step_seconds(processes: int, steps: int, out: Path) -> float:
    """Mean seconds per GRPO step (steps 2..N) of the arithmetic recipe, 1 or 2 processes."""
    common = ["train", str(ROOT / "recipes/arith-grpo.yaml"), "--no-progress", "--overwrite"]
    common += ["--set", f"output_dir={out}", "--set", f"train.steps={steps}", "--set", "train.eval_every=0", "--set", "train.report_to=[]"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, "-m", "maskgrpo", *common]
        env["OMP_NUM_THREADS"] = "2"
    else:
        accelerate = Path(sys.executable).parent / "accelerate"
        cmd = [str(accelerate), "launch", "--config_file", str(ROOT / "configs/accelerate/cpu-2proc.yaml"), "-m", "maskgrpo", *common]
        env["OMP_NUM_THREADS"] = "1"
    subprocess.run(cmd, env=env, check=True, capture_output=True, cwd=ROOT)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.mean(r["seconds"] for r in rows[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one memory config in this process
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps per timing run")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(2)
        print(json.dumps(one_step(json.loads(args.one))))
        return
    from .common import save, table

    rows, timing = [], {}
    if not args.skip_timing:
        with tempfile.TemporaryDirectory() as tmp:
            one = step_seconds(1, args.steps, Path(tmp) / "one")
            two = step_seconds(2, args.steps, Path(tmp) / "two")
        timing = {"1 process x 2 threads (s/step)": one, "2 processes x 1 thread (s/step)": two, "2 proc / 1 proc": two / one}
        print(table([timing], list(timing)))
    for name, config in CONFIGS.items():
        done = subprocess.run([sys.executable, "-m", "bench.scale", "--one", json.dumps(config)], capture_output=True, text=True, cwd=ROOT, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        est = estimate(config)
        rows.append(
            {
                "config": name,
                "measured peak (MiB)": result["measured"] / 2**20,
                "planner estimate (MiB)": est / 2**20,
                "estimate / measured": est / result["measured"],
                "step seconds": result["seconds"],
            }
        )
        print(f"{name}: measured {result['measured'] / 2**20:.0f} MiB, estimate {est / 2**20:.0f} MiB ({result['seconds']:.1f} s)", flush=True)
    columns = ["config", "measured peak (MiB)", "planner estimate (MiB)", "estimate / measured", "step seconds"]
    print(table(rows, columns))
    print(f"results: {save('scale', {'model': MID, 'timing': timing, 'memory': rows})}")


if __name__ == "__main__":
    main()
