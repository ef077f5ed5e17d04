"""MaskGIT and emerge: per-step counts, no re-masking, codebook restriction, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from maskgrpo.backbones.transformer import MaskedTransformer
from maskgrpo.registry import samplers
from maskgrpo.samplers.image import cosine_masked_fraction

TEXT_VOCAB, CODEBOOK, N = 12, 16, 16


@pytest.fixture(scope="module")
def model() -> MaskedTransformer:
    torch.manual_seed(0)
    # text ids 0..11, mask = 1, image codes 12..27 (MMaDA-style: codes after the text vocabulary)
    return MaskedTransformer(TEXT_VOCAB + CODEBOOK, 1, max_length=24, d_model=32, n_layers=1, n_heads=2).eval()


def build(kind: str, **kw):
    return samplers.build({"type": kind, "image_tokens": N, "codebook_offset": TEXT_VOCAB, "codebook_size": CODEBOOK, "steps": 6, **kw})


def prompt(batch: int) -> torch.Tensor:
    return torch.randint(4, TEXT_VOCAB, (batch, 4), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["maskgit", "emerge"])
def test_everything_decoded_inside_the_codebook_and_deterministic(model, kind: str) -> None:
    sampler = build(kind, cfg_scale=2.0)
    a = sampler.sample(model, prompt(8), torch.Generator().manual_seed(1))
    b = sampler.sample(model, prompt(8), torch.Generator().manual_seed(1))
    c = sampler.sample(model, prompt(8), torch.Generator().manual_seed(2))
    image = a.completion
    assert ((image >= TEXT_VOCAB) & (image < TEXT_VOCAB + CODEBOOK)).all()
    assert ((a.decode_step >= 0) & (a.decode_step < 6)).all()
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def test_maskgit_commits_the_scheduled_count_each_step(model) -> None:
    out = build("maskgit").sample(model, prompt(5), torch.Generator().manual_seed(0))
    remaining = [N] + [math.floor(N * cosine_masked_fraction((s + 1) / 6)) for s in range(5)] + [0]
    expected = [remaining[s] - remaining[s + 1] for s in range(6)]
    for s in range(6):
        assert (out.decode_step == s).sum(dim=1).tolist() == [expected[s]] * 5


def test_emerge_counts_are_binomial(model) -> None:
    """Step 0 reveals each of the N masked codes with p = 1 - k(1/T): mean N p, variance N p (1 - p)."""
    sampler = build("emerge")
    out = sampler.sample(model, prompt(3000), torch.Generator().manual_seed(0))
    first = (out.decode_step == 0).sum(dim=1).float()
    p = sampler.unmask_probability(0)
    assert abs(p - (1 - cosine_masked_fraction(1 / 6))) < 1e-9
    assert abs(first.mean().item() - N * p) < 0.05 * N * p + 0.05
    assert abs(first.var().item() - N * p * (1 - p)) < 0.15 * N * p * (1 - p)
    counts = torch.stack([(out.decode_step == s).sum(dim=1) for s in range(6)], dim=1)
    assert counts.float().std(dim=0).min() > 0  # random counts, unlike MaskGIT
    # the expected fraction still masked after step s follows the cosine schedule
    for s in range(5):
        still = (out.decode_step > s).float().mean().item()
        assert abs(still - cosine_masked_fraction((s + 1) / 6)) < 0.02


@pytest.mark.parametrize("kind", ["maskgit", "emerge"])
def test_never_re_masks(model, kind: str) -> None:
    seen = []
    original = model.hidden

    def spy(tokens, attention_mask=None):
        seen.append(tokens[: tokens.shape[0]].clone())
        return original(tokens, attention_mask)

    model.hidden = spy
    try:
        out = build(kind).sample(model, prompt(4), torch.Generator().manual_seed(3))
    finally:
        del model.hidden
    for x in seen:
        x = x[:4]
        committed = x != 1
        assert torch.equal(x[committed], out.tokens[committed])


def test_maskgit_noise_follows_mmada_t2i_generate() -> None:
    """MMaDA's t2i_generate multiplies the temperature by (1 - (s+1)/T) at every step before use
    (a running product from tau_0 = 1); Google's MaskGIT uses 4.5 (1 - (s+1)/T). Hand-computed
    for T = 12."""
    mmada = build("maskgit", steps=12)
    expected = [11 / 12, 11 * 10 / 144, 11 * 10 * 9 / 12**3, 11 * 10 * 9 * 8 / 12**4, 11 * 10 * 9 * 8 * 7 / 12**5]
    assert mmada.schedule == "mmada" and mmada.choice_temperature == 1.0
    for s, tau in enumerate(expected):
        assert abs(mmada.noise_level(s) - tau) < 1e-12, s
    assert abs(mmada.noise_level(5) - 0.111400) < 1e-6 and mmada.noise_level(11) == 0.0
    google = build("maskgit", steps=12, schedule="google")
    assert [round(google.noise_level(s), 6) for s in (0, 5, 11)] == [4.125, 2.25, 0.0]
    assert build("maskgit", steps=12, choice_temperature=2.0).noise_level(1) == 2.0 * 11 * 10 / 144


def test_maskgit_keeps_at_least_one_masked_before_the_last_step_like_mmada() -> None:
    """mask_len = max(1, min(unknown - 1, floor(N k((s+1)/T)))): with 3 steps over 4 codes the
    schedule asks for floor(4 k(2/3)) = 2 then 0 masked; MMaDA keeps one for the last step."""
    sampler = samplers.build({"type": "maskgit", "image_tokens": 4, "codebook_size": CODEBOOK, "codebook_offset": TEXT_VOCAB, "steps": 3})
    masked = torch.tensor([4, 2, 1])
    assert sampler.keep_masked(0, masked).tolist() == [3, 1, 1]  # floor(4 k(1/3)) = 3
    assert sampler.keep_masked(1, torch.tensor([3])).tolist() == [2]
    assert sampler.keep_masked(1, torch.tensor([2])).tolist() == [1]
    assert sampler.keep_masked(2, masked).tolist() == [0, 0, 0]


def test_maskgit_without_noise_commits_the_most_confident(model) -> None:
    """At tau = 0 the step-0 commits are exactly the masked positions whose sampled code is the
    most probable: the Gumbel term is the only randomness in the choice."""
    sampler = build("maskgit", choice_temperature=0.0)
    seen = []
    original = sampler._choose

    def spy(s, masked, log_probs, codes, generator):
        chosen = original(s, masked, log_probs, codes, generator)
        seen.append((log_probs.gather(-1, codes.unsqueeze(-1)).squeeze(-1), chosen))
        return chosen

    sampler._choose = spy
    sampler.sample(model, prompt(6), torch.Generator().manual_seed(0))
    confidence, chosen = seen[0]
    for row in range(6):
        k = int(chosen[row].sum())
        assert k > 0 and set(confidence[row].topk(k).indices.tolist()) == set(chosen[row].nonzero().squeeze(1).tolist())
