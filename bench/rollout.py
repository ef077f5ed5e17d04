"""Rollout throughput of the LLaDA sampler, its overhead over the bare forward passes it needs,
and its speed against a straightforward reference loop that recomputes full logits each step;
then the fast-rollout table (issue 14): every `cache` mode x `threshold` (off, 0.9) at completion
256, block 32, on the arithmetic-size model and on d 512 x 8 layers with a 32k vocabulary.

    python -m bench.rollout            # writes bench/results/rollout.json
    python -m bench.rollout --only fast          # the fast-rollout table alone (a few minutes at 1 thread)
    python -m bench.rollout --only fast --quick  # a smoke run (completion 64, smaller models)

Models are randomly initialised. The time of a forward does not depend on the weights, but the
number of forwards that threshold decoding needs does: a random model's confidences are near
1/vocabulary, so at tau = 0.9 it commits one token per step (the worst case, more forwards than
the 2-tokens-per-step baseline). The `peaked` rows scale the random model's output layer so that
its predictions are confident, which shows what the threshold saves when it fires; neither is a
trained model's behaviour, which only a trained checkpoint can measure.
"""

from __future__ import annotations

import argparse
import time

import torch

from maskgrpo.backbones.transformer import MaskedTransformer
from maskgrpo.samplers.base import sample_tokens, top_k_per_row
from maskgrpo.samplers.low_confidence import LowConfidenceSampler, commit_schedule

from .common import best_of, save, table

CONFIGS = [
    # name, vocab, d_model, layers, batch, prompt, gen, block, steps
    ("arith-small", 21, 128, 3, 128, 8, 8, 8, 8),
    ("vocab-32k", 32000, 128, 2, 16, 64, 64, 16, 32),
    ("vocab-32k-d512", 32000, 512, 4, 16, 64, 64, 16, 32),
]


@torch.no_grad()
def reference_sample(model, prompt, gen_length, block_length, steps, temperature, generator):
    """The textbook loop: full logits over the whole sequence at every step, then the same
    per-block decisions (and random draws) as the library's sampler."""
    batch, p = prompt.shape
    mask = model.mask_token_id
    x = torch.cat([prompt, torch.full((batch, gen_length), mask)], dim=1)
    blocks = gen_length // block_length
    for b in range(blocks):
        lo, hi = p + b * block_length, p + (b + 1) * block_length
        counts = commit_schedule((x[:, lo:hi] == mask).sum(1), steps // blocks)
        for s in range(steps // blocks):
            k = counts[:, s]
            if int(k.max()) == 0:
                continue
            logits = model(x)  # [B, T, V] every step
            block_logits = logits[:, lo:hi]
            block_logits[..., mask] = float("-inf")
            still = x[:, lo:hi] == mask
            x0 = x[:, lo:hi].clone()
            x0[still] = sample_tokens(block_logits[still], temperature, generator)
            conf = torch.softmax(block_logits.float(), -1).gather(-1, x0[..., None]).squeeze(-1)
            conf = conf.masked_fill(~still, float("-inf"))
            commit = top_k_per_row(conf, k) & still
            x[:, lo:hi] = torch.where(commit, x0, x[:, lo:hi])
    return x


def sampler_table() -> list[dict]:
    torch.manual_seed(0)
    rows = []
    for name, vocab, d, layers, batch, p, gen, block, steps in CONFIGS:
        model = MaskedTransformer(vocab, vocab - 1, max_length=p + gen, d_model=d, n_layers=layers, n_heads=4).eval()
        prompt = torch.randint(0, vocab - 1, (batch, p))
        sampler = LowConfidenceSampler(gen, block, steps, temperature=0.9)
        library = best_of(lambda: sampler.sample(model, prompt, torch.Generator().manual_seed(0)))

        # The forward passes the sampler cannot avoid: one per step, vocabulary projection on the block.
        x = torch.cat([prompt, torch.full((batch, gen), model.mask_token_id)], dim=1)

        def bare() -> None:
            with torch.no_grad():
                for _ in range(steps):
                    model.logits_from_hidden(model.hidden(x)[:, p : p + block])

        forwards = best_of(bare)
        reference = best_of(lambda: reference_sample(model, prompt, gen, block, steps, 0.9, torch.Generator().manual_seed(0)))
        same = torch.equal(
            sampler.sample(model, prompt, torch.Generator().manual_seed(1)).tokens,
            reference_sample(model, prompt, gen, block, steps, 0.9, torch.Generator().manual_seed(1)),
        )
        rows.append(
            {
                "config": name,
                "batch x gen": f"{batch}x{gen}",
                "steps": steps,
                "sampler s": library,
                "tokens/s": batch * gen / library,
                "bare forwards s": forwards,
                "overhead %": 100 * (library - forwards) / forwards,
                "reference s": reference,
                "speed-up vs reference": reference / library,
                "same output": same,
            }
        )
    print(table(rows, list(rows[0])))
    return rows


FAST_MODELS = [
    # name, vocab, d_model, layers, heads, prompt; arith: the arithmetic world's char vocabulary and model size
    ("arith d128x3", 21, 128, 3, 4, 32),
    ("d512x8 v32k", 32000, 512, 8, 8, 32),
]
FAST_SETTINGS = [(cache, tau) for cache in ("none", "prefix", "dual") for tau in (None, 0.9)]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def fast_table(quick: bool = False, batch: int = 1) -> list[dict]:
    """Every cache mode x threshold on each model, against cache none / threshold off (today's
    sampler): 256 tokens in blocks of 32 with 128 steps (2 tokens per step, the paper's rollouts)."""
    gen, block, steps = (64, 16, 32) if quick else (256, 32, 128)
    rows = []
    for name, vocab, d, layers, heads, p in FAST_MODELS:
        if quick:
            layers = min(layers, 2)
        torch.manual_seed(0)
        model = MaskedTransformer(vocab, vocab - 1, max_length=p + gen, d_model=d, n_layers=layers, n_heads=heads).eval()
        prompt = torch.randint(0, vocab - 1, (batch, p))
        variants = [("random", model)]
        if vocab > 100:  # a confident copy: the threshold rows with a threshold that fires
            peaked = MaskedTransformer(vocab, vocab - 1, max_length=p + gen, d_model=d, n_layers=layers, n_heads=heads).eval()
            peaked.load_state_dict(model.state_dict())
            with torch.no_grad():
                peaked.head.weight.mul_(100.0)
            variants.append(("peaked", peaked))
        baseline = None
        LowConfidenceSampler(gen, block, steps, temperature=0.9).sample(model, prompt, torch.Generator().manual_seed(0))  # warm-up
        for weights, m in variants:
            for cache, tau in FAST_SETTINGS:
                if weights == "peaked" and tau is None:
                    continue  # same forwards as the random model: same time
                sampler = LowConfidenceSampler(gen, block, steps, temperature=0.9, cache=cache, threshold=tau)
                seconds, out = timed(lambda: sampler.sample(m, prompt, torch.Generator().manual_seed(0)))
                baseline = baseline or seconds
                rows.append(
                    {
                        "model": name,
                        "weights": weights,
                        "cache": cache,
                        "threshold": "off" if tau is None else tau,
                        "tokens/s": batch * gen / seconds,
                        "forwards/token": out.stats["forwards"] / gen,
                        "tokens/step": out.stats["tokens_per_step"],
                        "speed-up": baseline / seconds,
                    }
                )
                print(table(rows[-1:], list(rows[-1])), flush=True)
    print(f"\nfast rollouts: completion {gen}, block {block}, {steps} steps, batch {batch}, {torch.get_num_threads()} threads")
    print(table(rows, list(rows[0])))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["all", "sampler", "fast"], default="all")
    parser.add_argument("--quick", action="store_true", help="fast table: completion 64, at most 2 layers (a smoke run)")
    args = parser.parse_args(argv)
    payload = {}
    if args.only in ("all", "sampler"):
        payload["rows"] = sampler_table()
    if args.only in ("all", "fast"):
        payload["fast_rows"] = fast_table(args.quick)
    print(f"results: {save('rollout' if args.only == 'all' else f'rollout-{args.only}', payload)}")


if __name__ == "__main__":
    main()
