"""How noisy is each estimator's log-likelihood estimate? The mechanism MaskGRPO argues through:
an importance ratio built from a noisy likelihood estimate is a noisy ratio.

One batch of rollouts from the start policy (the main recipe's sampler, fixed seed); for every
estimator, `--draws` independent mask draws (a different batch seed each), each giving one
estimate per sequence, the mean over the mu inner iterations of the weighted sum of log p over
the scored tokens (exactly the inputs the GRPO loss sees). LLaDA's Monte-Carlo ELBO (`elbo`,
stratified t, weight 1/t) is the reference: an unbiased bound on log p(completion | prompt).

Reported per estimator (means over sequences):
- `std`: the standard deviation across draws of a sequence's estimate (nats), and its ratio to
  the ELBO's on the same rollouts;
- `tokens`: scored tokens per sequence and iteration, and `std/token` = std over that count, so
  estimators that score fewer tokens do not look quieter for that reason alone;
- `corr(ELBO)`: Pearson correlation across sequences between the estimator's mean estimate and
  the ELBO's: whether it ranks sequences as the likelihood does (a biased but quiet estimate
  scores low here).

    python -m bench.estimator_variance --world chain          # every estimator of the ablation
"""

from __future__ import annotations

import argparse

import torch

from maskgrpo.backbones.base import TokenScorer
from maskgrpo.components import build_run
from maskgrpo.data import encode_prompts
from maskgrpo.estimators.masking import Estimator
from maskgrpo.recipe import load_recipe
from maskgrpo.registry import estimators
from maskgrpo.samplers.base import Rollout
from maskgrpo.utils import RowGenerators

from .common import save, table


@torch.no_grad()
def sequence_estimates(
    backbone: torch.nn.Module, estimator: Estimator, rollout: Rollout, num_iterations: int, batch_seed: int, mask_id: int, eos_id: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """([B] estimate, [B] scored tokens per iteration): for each sequence the mean over the mu
    masked views of sum(weight * log p) over its scored tokens, as the GRPO loss scores them."""
    scorer = TokenScorer(backbone)
    batch = rollout.tokens.shape[0]
    total = torch.zeros(batch, dtype=torch.float64)
    tokens = torch.zeros(batch, dtype=torch.float64)
    for j in range(num_iterations):
        view = estimator.masked_view(rollout, j, num_iterations, batch_seed, mask_id, eos_id)
        logp = scorer(view.tokens, view.of_rollout(rollout.tokens), view.loss_mask, view.attention_mask).double()
        view_row = view.loss_mask.nonzero()[:, 0]  # row-major, as token_logprobs returns them
        sequence = view.of_rollout(torch.arange(batch))[view_row]
        weight = torch.ones(view.tokens.shape[0], dtype=torch.float64) if view.weight is None else view.weight.double()
        total.index_add_(0, sequence, logp * weight[view_row])
        tokens.index_add_(0, sequence, torch.ones_like(logp))
    return total / num_iterations, tokens / num_iterations


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = (a.norm() * b.norm()).item()
    return (a @ b).item() / denominator if denominator > 0 else float("nan")


def measure(recipes: dict[str, str], prompts: int = 16, group_size: int = 4, draws: int = 8, seed: int = 0) -> list[dict[str, object]]:
    """One row per estimator (and `elbo` first) on one batch of rollouts from the first recipe's
    start policy and sampler; every recipe must share the policy (the ablation's do)."""
    first = load_recipe(next(iter(recipes.values())))
    parts = build_run(first)
    model = parts.backbone.eval()
    examples = [parts.task.train_example(i) for i in range(prompts)]
    ids, attn = encode_prompts(parts.tokenizer, [e.prompt for e in examples for _ in range(group_size)], torch.device("cpu"))
    rows = torch.arange(ids.shape[0])
    rollout = parts.sampler.sample(model, ids, RowGenerators.seeded(seed, 0, 1_000_000, rows=rows), attention_mask=attn)
    rollout.row_ids = rows
    mu, mask_id, eos = first.grpo.num_iterations, model.mask_token_id, parts.tokenizer.eos_token_id

    def estimates(estimator: Estimator) -> tuple[torch.Tensor, torch.Tensor]:
        runs = [sequence_estimates(model, estimator, rollout, mu, 10_000 * seed + d, mask_id, eos) for d in range(draws)]
        return torch.stack([r[0] for r in runs]), torch.stack([r[1] for r in runs]).mean(0)  # [draws, B], [B]

    named = {"elbo": estimators.build("elbo")}
    named.update({name: estimators.build(load_recipe(path).estimator, where="estimator") for name, path in recipes.items()})
    results = {name: estimates(est) for name, est in named.items()}
    elbo_std = results["elbo"][0].std(dim=0).mean().item()
    elbo_mean = results["elbo"][0].mean(dim=0)
    table_rows = []
    for name, (values, scored) in results.items():
        std = values.std(dim=0)  # [B] across draws
        table_rows.append(
            {
                "estimator": name,
                "mean": values.mean().item(),
                "std": std.mean().item(),
                "std / ELBO std": std.mean().item() / elbo_std if elbo_std > 0 else float("nan"),
                "tokens": scored.mean().item(),
                "std/token": (std / scored.clamp(min=1)).mean().item(),
                "corr(ELBO)": pearson(values.mean(dim=0), elbo_mean),
            }
        )
    return table_rows


COLUMNS = ["estimator", "mean", "std", "std / ELBO std", "tokens", "std/token", "corr(ELBO)"]


def main() -> None:
    from .learning import WORLDS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", choices=sorted(WORLDS), default="chain")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--draws", type=int, default=8, help="independent mask draws per estimator")
    args = parser.parse_args()
    rows = measure(WORLDS[args.world], args.prompts, args.group_size, args.draws)
    print(table(rows, COLUMNS))
    print(f"results: {save(f'estimator-variance-{args.world}', {'world': args.world, **vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
