"""Rollout throughput of the LLaDA sampler, its overhead over the bare forward passes it needs,
and its speed against a straightforward reference loop that recomputes full logits each step.

    python -m bench.rollout            # writes bench/results/rollout.json
"""

from __future__ import annotations

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


def main() -> None:
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
    cols = list(rows[0])
    print(table(rows, cols))
    print(f"results: {save('rollout', {'rows': rows})}")


if __name__ == "__main__":
    main()
