"""Time and peak memory of one GRPO step per estimator at a 32k vocabulary and a 256-token
prompt, and the loss's peak memory against computing full-sequence logits.

Each measurement runs in a fresh process (peak RSS is a process-wide high-water mark), one at a
time, with the thread count of this process.

    python -m bench.step               # writes bench/results/step.json
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

import torch

from .common import save, table

VOCAB, PROMPT, GEN, D, LAYERS, BATCH, MU = 32000, 256, 64, 256, 2, 16, 2


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str) -> None:
    """One measurement: `loss:<selected|full>` or `step:<estimator>`."""
    from maskgrpo.backbones.base import token_logprobs
    from maskgrpo.estimators.masking import truncated_rate  # noqa: F401  (imports the registry)
    from maskgrpo.backbones.transformer import MaskedTransformer
    from maskgrpo.grpo import grpo_token_loss
    from maskgrpo.registry import estimators
    from maskgrpo.samplers.base import Rollout

    torch.manual_seed(0)
    model = MaskedTransformer(VOCAB, VOCAB - 1, max_length=PROMPT + GEN, d_model=D, n_layers=LAYERS, n_heads=4)
    tokens = torch.randint(0, VOCAB - 1, (BATCH, PROMPT + GEN))
    rollout = Rollout(tokens, PROMPT, torch.arange(GEN).repeat(BATCH, 1) // 4)
    kind, name = mode.split(":")
    est = estimators.build(name if kind == "step" else "fading_out")
    views = [est.masked_view(rollout, j, MU, 0, model.mask_token_id) for j in range(MU)]
    adv = torch.randn(BATCH)
    with torch.no_grad():
        old = [token_logprobs(model, v.tokens, tokens, v.loss_mask) for v in views]
    base = _rss_mb()
    start = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for j, view in enumerate(views):
        if kind == "loss" and name == "full":
            logits = model(view.tokens)  # [B, T, V]: what a naive implementation materialises
            logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)[view.loss_mask]
        else:
            logp = token_logprobs(model, view.tokens, tokens, view.loss_mask)
        rows = view.loss_mask.nonzero()[:, 0]
        loss = grpo_token_loss(logp, old[j], adv[rows], 0.2, 0.2).loss.mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_mb": _rss_mb(), "base_mb": base, "scored_tokens": int(views[0].loss_mask.sum())}))


def measure(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.step", "--child", mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = []
    for mode in ["loss:selected", "loss:full"]:
        r = measure(mode)
        rows.append({"what": mode, "seconds": r["seconds"], "extra peak MB": r["peak_mb"] - r["base_mb"], "scored tokens": r["scored_tokens"]})
    ratio = rows[0]["extra peak MB"] / max(rows[1]["extra peak MB"], 1e-9)
    for est in ["fading_out", "random", "unigrpo", "d1", "trace"]:
        r = measure(f"step:{est}")
        rows.append({"what": f"step:{est}", "seconds": r["seconds"], "extra peak MB": r["peak_mb"] - r["base_mb"], "scored tokens": r["scored_tokens"]})
    print(f"vocab {VOCAB}, prompt {PROMPT}, completion {GEN}, batch {BATCH}, mu {MU}, d_model {D}, {LAYERS} layers")
    print(table(rows, ["what", "seconds", "extra peak MB", "scored tokens"]))
    print(f"loss peak memory, selected positions / full-sequence logits: {ratio:.3f}")
    print(f"results: {save('step', {'rows': rows, 'selected_over_full_peak': ratio})}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
