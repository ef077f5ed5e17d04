"""Fast rollouts (issue 14): the block KV cache (`sampler.cache: prefix | dual`) and
confidence-threshold parallel decoding (`sampler.threshold`) of the LLaDA text sampler."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from maskgrpo.backbones.llada import LLaDABackbone
from maskgrpo.backbones.transformer import MaskedTransformer
from maskgrpo.errors import MaskGRPOError
from maskgrpo.recipe import load_recipe
from maskgrpo.samplers.base import Rollout, all_mask_start, guided_logits, sample_tokens, top_k_per_row, uniform
from maskgrpo.samplers.low_confidence import LowConfidenceSampler, commit_schedule
from maskgrpo.trainer import GRPOTrainer
from maskgrpo.utils import RowGenerators

from .conftest import tiny_grpo_recipe, vary_rewards

MODES = ["none", "prefix", "dual"]
THRESHOLDS = [None, 0.5]
VOCAB, MASK = 24, 23
LLADA_CONFIG = dict(
    d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=VOCAB, embedding_size=VOCAB,
    block_type="llama", activation_type="silu", layer_norm_type="rms", rope=True, weight_tying=False,
)


def make_model(kind: str) -> torch.nn.Module:
    """A random model made confident (scaled head), so a 0.5 threshold commits several tokens in
    some steps and one in others, and rows finish their blocks at different steps."""
    torch.manual_seed(0)
    if kind == "transformer":
        model = MaskedTransformer(VOCAB, MASK, max_length=40, d_model=32, n_layers=2, n_heads=2).eval()
        head = model.head.weight
    else:
        model = LLaDABackbone.from_config(LLADA_CONFIG, mask_token_id=MASK).eval()
        head = model.model.transformer.ff_out.weight
    with torch.no_grad():
        head.mul_(25.0 if kind == "transformer" else 20.0)
    return model


@pytest.fixture(params=["transformer", "llada"])
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return make_model(request.param)


def padded_prompts() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Three prompts of lengths 6, 3 and 5, left-padded to 6 (pad id 0)."""
    rows = [torch.tensor(r) for r in ([5, 6, 7, 8, 9, 10], [11, 12, 13], [14, 3, 15, 16, 4])]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attn = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], attn[i, width - len(r) :] = r, True
    return ids, attn, rows


def gens(rows: list[int], seed: int = 0) -> RowGenerators:
    return RowGenerators.seeded(seed, 7, rows=rows)


def sampler(cache: str = "none", threshold: float | None = None, **kw) -> LowConfidenceSampler:
    options = {"gen_length": 16, "block_length": 8, "steps": 8, "temperature": 1.0, **kw}
    return LowConfidenceSampler(cache=cache, threshold=threshold, **options)


# -- the KV-cache forward itself ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["transformer-right", "transformer-left", "llada"])
def test_hidden_kv_reproduces_the_full_pass(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "llada":
        m = make_model("llada")
    else:
        m = MaskedTransformer(VOCAB, MASK, max_length=40, d_model=32, n_layers=2, n_heads=2, positions=kind.split("-")[1]).eval()
    ids, attn, _ = padded_prompts()
    x = torch.cat([ids, torch.randint(0, MASK, (3, 10))], dim=1)
    full_attn = torch.cat([attn, torch.ones(3, 10, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        h = m.hidden(x, full_attn)
        h_kv, cache = m.hidden_kv(x, full_attn)
        assert torch.equal(h, h_kv)
        # an unchanged sequence: a slice against its own cache is the full pass's slice
        assert torch.allclose(m.hidden_kv(x[:, 8:12], full_attn, 8, cache)[0], h[:, 8:12], atol=1e-6)
        assert torch.allclose(m.hidden_kv(x[:, 8:], full_attn, 8, cache)[0], h[:, 8:], atol=1e-6)


@pytest.mark.parametrize("kind", ["transformer", "llada"])
def test_with_one_layer_the_cache_is_exact_after_the_slice_changes(kind: str) -> None:
    """One layer: the other columns' cached keys/values depend only on their own (unchanged)
    tokens, so a changed slice recomputed against the cache equals the full pass exactly; this
    is what fails if the fresh keys/values of the slice are not spliced into the cache."""
    torch.manual_seed(0)
    if kind == "llada":
        m = LLaDABackbone.from_config({**LLADA_CONFIG, "n_layers": 1}, mask_token_id=MASK).eval()
    else:
        m = MaskedTransformer(VOCAB, MASK, max_length=40, d_model=32, n_layers=1, n_heads=2).eval()
    ids, attn, _ = padded_prompts()
    x = torch.cat([ids, torch.full((3, 10), MASK)], dim=1)
    full_attn = torch.cat([attn, torch.ones(3, 10, dtype=torch.bool)], dim=1)
    changed = x.clone()
    changed[:, 8:12] = torch.randint(0, MASK, (3, 4))
    with torch.no_grad():
        _, cache = m.hidden_kv(x, full_attn)
        ref = m.hidden(changed, full_attn)
        assert torch.allclose(m.hidden_kv(changed[:, 8:12], full_attn, 8, cache)[0], ref[:, 8:12], atol=1e-6)  # dual
        assert torch.allclose(m.hidden_kv(changed[:, 8:], full_attn, 8, cache)[0], ref[:, 8:], atol=1e-6)  # prefix


class Checker(torch.nn.Module):
    """Wraps a KV-cache backbone: at every cached call, also runs the uncached full pass on the
    current sequence and keeps the largest logit difference; at full calls, asserts equality."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.mask_token_id, self.vocab_size = inner, inner.mask_token_id, inner.vocab_size
        self.full: torch.Tensor | None = None
        self.first_diffs: list[float] = []
        self.later_diffs: list[float] = []

    def hidden(self, tokens, attention_mask=None):
        return self.inner.hidden(tokens, attention_mask)

    def logits_from_hidden(self, h):
        return self.inner.logits_from_hidden(h)

    def hidden_kv(self, tokens, attention_mask=None, start=0, cache=None):
        h, kv = self.inner.hidden_kv(tokens, attention_mask, start, cache)
        if cache is None:
            self.full = tokens.clone()
            ref = self.inner.hidden(tokens, attention_mask)
            self.first_diffs.append(float((self.inner.logits_from_hidden(h) - self.inner.logits_from_hidden(ref)).abs().max()))
        else:
            self.full[:, start : start + tokens.shape[1]] = tokens
            ref = self.inner.hidden(self.full, attention_mask)[:, start : start + tokens.shape[1]]
            self.later_diffs.append(float((self.inner.logits_from_hidden(h) - self.inner.logits_from_hidden(ref)).abs().max()))
        return h, kv


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_logits_equal_uncached_at_each_blocks_first_step_and_close_after(model, cache: str) -> None:
    ids, attn, _ = padded_prompts()
    checker = Checker(model)
    sampler(cache, gen_length=24, block_length=8, steps=12).sample(checker, ids, gens([0, 1, 2]), attention_mask=attn)
    assert len(checker.first_diffs) == 3  # one full pass per block, at its first step
    assert max(checker.first_diffs) == 0.0
    assert len(checker.later_diffs) == 3 * 3
    # later steps use the block's first-step keys/values: an approximation, but a close one
    with torch.no_grad():
        scale = float(model(torch.cat([ids, torch.full((3, 24), MASK)], 1)).abs().max())
    assert 0 < max(checker.later_diffs) < 0.25 * scale


# -- cache: none is today's sampler ---------------------------------------------------------------
@torch.no_grad()
def todays_sampler(s: LowConfidenceSampler, backbone, prompt, generator, attention_mask) -> Rollout:
    """The sampler as it was before fast rollouts (commit 221366d), kept here as the reference."""
    p, mask_id, device = prompt.shape[1], backbone.mask_token_id, prompt.device
    x, attn, decode_step = all_mask_start(prompt, attention_mask, s.gen_length, mask_id)
    blocks = s.gen_length // s.block_length
    step = 0
    for b in range(blocks):
        lo, hi = p + b * s.block_length, p + (b + 1) * s.block_length
        counts = commit_schedule((x[:, lo:hi] == mask_id).sum(dim=1), s.steps // blocks)
        for i in range(s.steps // blocks):
            k = counts[:, i]
            if int(k.max()) > 0:
                logits = guided_logits(backbone, x, attn, p, lo, hi, s.cfg_scale)
                logits[..., mask_id] = float("-inf")
                block = x[:, lo:hi]
                still = block == mask_id
                picked = sample_tokens(logits, s.temperature, generator)
                x0 = torch.where(still, picked, block)
                if s.remasking == "low_confidence":
                    chosen = logits.gather(-1, picked.unsqueeze(-1)).squeeze(-1).float()
                    confidence = torch.exp(chosen - torch.logsumexp(logits.float(), dim=-1))
                else:
                    confidence = uniform(tuple(block.shape), generator, device)
                confidence = confidence.masked_fill(~still, float("-inf"))
                commit = top_k_per_row(confidence, k) & still
                x[:, lo:hi] = torch.where(commit, x0, block)
                decode_step[:, lo - p : hi - p][commit] = step
            step += 1
    return Rollout(x, p, decode_step, attn)


@pytest.mark.parametrize(
    "options",
    [{"temperature": 0.0}, {"temperature": 1.0}, {"temperature": 1.0, "cfg_scale": 1.5}, {"temperature": 0.7, "remasking": "random"}, {"steps": 32}],
)
def test_cache_none_is_bit_identical_to_todays_sampler(options: dict) -> None:
    model = make_model("transformer")
    ids, attn, _ = padded_prompts()
    s = sampler("none", None, **options)
    ours = s.sample(model, ids, gens([0, 1, 2]), attention_mask=attn)
    ref = todays_sampler(s, model, ids, gens([0, 1, 2]), attn)
    assert torch.equal(ours.tokens, ref.tokens) and torch.equal(ours.decode_step, ref.decode_step)


# -- threshold decoding ----------------------------------------------------------------------------
class Confidences(torch.nn.Module):
    """A stub backbone whose prediction at completion position n of a row is token 1 with
    probability table[row kind][n] (row kind = the prompt's first token), whatever the input."""

    mask_token_id, vocab_size = 11, 12

    def __init__(self, tables: dict[int, list[float]], prompt_length: int):
        super().__init__()
        self.tables, self.p = tables, prompt_length

    def _logits(self, kinds: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        conf = torch.tensor([[self.tables[int(k)][int(c) - self.p] if c >= self.p else 0.5 for c in columns] for k in kinds])
        rest = ((1 - conf) / 10).clamp_min(1e-9)  # ten other tokens share the rest
        logits = torch.cat([rest.log()[..., None], conf.log()[..., None], rest.log()[..., None].expand(*conf.shape, 9), torch.zeros(*conf.shape, 1)], -1)
        return logits

    def hidden(self, tokens, attention_mask=None):
        return self._logits(tokens[:, 0], torch.arange(tokens.shape[1]))

    def hidden_kv(self, tokens, attention_mask=None, start=0, cache=None):
        kinds = tokens[:, 0] if cache is None else cache[0][0][:, 0, 0, 0].long()
        if cache is None:
            cache = [(tokens[:, None, :, None].float(), tokens[:, None, :, None].float())]
        return self._logits(kinds, torch.arange(start, start + tokens.shape[1])), cache

    def logits_from_hidden(self, h):
        return h


@pytest.mark.parametrize("cache", MODES)
def test_threshold_commits_exactly_the_tokens_above_it_and_at_least_one(cache: str) -> None:
    tables = {
        2: [0.9, 0.2, 0.6, 0.3, 0.15, 0.7, 0.4, 0.55] * 2,
        3: [0.95, 0.96, 0.97, 0.98, 0.99, 0.91, 0.92, 0.93] + [0.2] * 8,
    }
    stub = Confidences(tables, prompt_length=2)
    prompt = torch.tensor([[2, 4], [3, 4]])
    out = sampler(cache, 0.5, temperature=0.0).sample(stub, prompt, None)
    # row 0: above 0.5 in the first step {0.9, 0.6, 0.7, 0.55}; then one per step, most confident first
    assert out.decode_step[0].tolist() == [0, 3, 0, 2, 4, 0, 1, 0] + [5, 8, 5, 7, 9, 5, 6, 5]
    # row 1: its first block in one step (everything above 0.5), its second one token per step
    assert out.decode_step[1].tolist()[:8] == [0] * 8
    assert sorted(out.decode_step[1].tolist()[8:]) == list(range(1, 9))
    assert (out.completion == 1).all()
    # forwards: block 1 takes row 0's 5 steps, block 2 row 1's 8; tokens per committing row-step
    assert out.stats == {"forwards": 13.0, "forwards_per_block": 6.5, "tokens_per_step": 32 / (5 + 5 + 1 + 8)}


def test_threshold_off_and_one_token_steps_report_stats() -> None:
    model = make_model("transformer")
    ids, attn, _ = padded_prompts()
    out = sampler("prefix", None, steps=8).sample(model, ids, gens([0, 1, 2]), attention_mask=attn)
    assert out.stats == {"forwards": 8.0, "forwards_per_block": 4.0, "tokens_per_step": 2.0}
    out = sampler("none", 1.0).sample(model, ids, gens([0, 1, 2]), attention_mask=attn)  # nothing exceeds 1
    assert out.stats == {"forwards": 16.0, "forwards_per_block": 8.0, "tokens_per_step": 1.0}


def test_threshold_saves_forwards_on_a_confident_model() -> None:
    model = make_model("transformer")
    ids, attn, _ = padded_prompts()
    out = sampler("dual", 0.5, steps=16).sample(model, ids, gens([0, 1, 2]), attention_mask=attn)
    assert out.stats["forwards"] < 16 and out.stats["tokens_per_step"] > 1


# -- batch invariance, determinism, decode steps ------------------------------------------------------
@pytest.mark.parametrize("cache,threshold", list(itertools.product(MODES, THRESHOLDS)))
def test_a_rows_rollout_does_not_depend_on_its_batch(model, cache: str, threshold: float | None) -> None:
    ids, attn, rows = padded_prompts()
    s = sampler(cache, threshold)
    batch = s.sample(model, ids, gens([0, 1, 2]), attention_mask=attn)
    if threshold is not None:  # the case worth testing: rows finish their blocks at different steps
        assert len(set(batch.decode_step.max(dim=1).values.tolist())) > 1 and batch.stats["tokens_per_step"] > 1
    for i, r in enumerate(rows):
        alone = s.sample(model, r[None], gens([i]))
        assert torch.equal(alone.completion[0], batch.completion[i]), (cache, threshold, i)
        assert torch.equal(alone.decode_step[0], batch.decode_step[i]), (cache, threshold, i)
    # the same row beside other rows (and other padding) than before
    pair = s.sample(model, torch.stack([ids[2], ids[1]]), gens([2, 1]), attention_mask=torch.stack([attn[2], attn[1]]))
    assert torch.equal(pair.completion[0], batch.completion[2])


@pytest.mark.parametrize("cache,threshold", list(itertools.product(MODES, THRESHOLDS)))
def test_same_seed_same_rollout_other_seed_differs(cache: str, threshold: float | None) -> None:
    model = make_model("transformer")
    ids, attn, _ = padded_prompts()
    s = sampler(cache, threshold, temperature=2.0)
    a, b = (s.sample(model, ids, gens([0, 1, 2], seed=1), attention_mask=attn) for _ in range(2))
    c = s.sample(model, ids, gens([0, 1, 2], seed=2), attention_mask=attn)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.decode_step, b.decode_step) and a.stats == b.stats
    assert not torch.equal(a.tokens, c.tokens)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(s.sample(model, ids, g1, attention_mask=attn).tokens, s.sample(model, ids, g2, attention_mask=attn).tokens)


class Recorder(torch.nn.Module):
    """Keeps the full sequence as the sampler sees it at every forward (cached calls spliced in)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.mask_token_id, self.vocab_size = inner, inner.mask_token_id, inner.vocab_size
        self.states: list[torch.Tensor] = []

    def hidden(self, tokens, attention_mask=None):
        self.states.append(tokens.clone())
        return self.inner.hidden(tokens, attention_mask)

    def logits_from_hidden(self, h):
        return self.inner.logits_from_hidden(h)

    def hidden_kv(self, tokens, attention_mask=None, start=0, cache=None):
        state = tokens.clone() if cache is None else self.states[-1].clone()
        state[:, start : start + tokens.shape[1]] = tokens
        self.states.append(state)
        return self.inner.hidden_kv(tokens, attention_mask, start, cache)


@pytest.mark.parametrize("cache,threshold", list(itertools.product(MODES, THRESHOLDS)))
def test_every_position_decoded_once_never_remasked_blocks_in_order(cache: str, threshold: float | None) -> None:
    model = make_model("transformer")
    prompt = torch.tensor([[5, 6, 7, 8, 9, 10]])
    rec = Recorder(model)
    out = sampler(cache, threshold).sample(rec, prompt, gens([0]))
    states = [s[:, 6:] for s in rec.states] + [out.completion]
    step = out.decode_step[0]
    assert (step >= 0).all() and (out.completion != MASK).all()
    for before, after in zip(states, states[1:]):
        kept = before != MASK
        assert torch.equal(before[kept], after[kept])  # committed tokens never change or re-mask
    # a single row: the position committed at step s first shows in the state after forward s
    first_seen = torch.stack([(s[0] != MASK) for s in states]).float().argmax(dim=0)
    assert torch.equal(first_seen - 1, step)
    assert int(step[:8].max()) < int(step[8:].min())  # blocks left to right
    if threshold is not None:
        assert sorted(set(step.tolist())) == list(range(int(out.stats["forwards"])))


# -- GRPO on cached rollouts, unsupported backbones, settings --------------------------------------------
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_grpo_step_on_cached_threshold_rollouts_trains(tmp_path: Path, cache: str) -> None:
    sampler_cfg = {"type": "low_confidence", "gen_length": 8, "block_length": 4, "steps": 4, "temperature": 1.0, "cache": cache, "threshold": 0.9}
    recipe = load_recipe(tiny_grpo_recipe(tmp_path, sampler=sampler_cfg, grpo={"group_size": 4, "num_iterations": 1}))
    trainer = GRPOTrainer(recipe, progress=False)
    vary_rewards(trainer)
    before = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    row = trainer.train_step(0)
    after = trainer.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert row["ratio/first_max_dev"] < 1e-5
    assert row["rollout/forwards_per_block"] >= 1 and row["rollout/tokens_per_step"] >= 1


def test_a_backbone_without_a_kv_forward_is_a_one_line_error(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForMaskedLM

    from maskgrpo.registry import backbones

    BertForMaskedLM(BertConfig(vocab_size=12, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)).save_pretrained(tmp_path)
    hf = backbones.build({"type": "hf", "path": str(tmp_path), "mask_token_id": 11}).eval()
    prompt = torch.tensor([[1, 2, 3]])
    sampler("none").sample(hf, prompt, gens([0]))  # no cache: any backbone
    for cache in ("prefix", "dual"):
        with pytest.raises(MaskGRPOError, match="sampler.cache") as err:
            sampler(cache).sample(hf, prompt, gens([0]))
        assert "\n" not in str(err.value) and "HFMaskedLM" in str(err.value)


def test_invalid_fast_rollout_settings_name_the_field() -> None:
    with pytest.raises(MaskGRPOError, match="sampler.cache"):
        sampler("full")
    for bad in (0, 1.5, -0.1, True):
        with pytest.raises(MaskGRPOError, match="sampler.threshold"):
            sampler("none", bad)
    with pytest.raises(MaskGRPOError, match="sampler.threshold"):
        sampler("none", 0.9, remasking="random")
