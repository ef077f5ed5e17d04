"""The LLaDA text sampler's behaviour: schedule, block order, no re-masking, determinism."""

from __future__ import annotations

import pytest
import torch

from maskgrpo.errors import MaskGRPOError
from maskgrpo.samplers.low_confidence import LowConfidenceSampler, commit_schedule
from maskgrpo.registry import samplers


class Recorder(torch.nn.Module):
    """Wraps a backbone and keeps every input it was called on."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.inputs = inner, []
        self.mask_token_id, self.vocab_size = inner.mask_token_id, inner.vocab_size

    def hidden(self, tokens, attention_mask=None):
        self.inputs.append(tokens.clone())
        return self.inner.hidden(tokens, attention_mask)

    def logits_from_hidden(self, h):
        return self.inner.logits_from_hidden(h)


def prompts(batch: int = 3, length: int = 4) -> torch.Tensor:
    return torch.arange(4, 4 + batch * length).remainder(17).add(4).view(batch, length)


def test_commit_schedule_splits_evenly_and_sums() -> None:
    counts = commit_schedule(torch.tensor([8, 5, 0, 3]), 4)
    assert counts.tolist() == [[2, 2, 2, 2], [2, 1, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_exact_count_per_step_and_blocks_left_to_right(tiny_model, remasking: str, temperature: float) -> None:
    sampler = LowConfidenceSampler(gen_length=12, block_length=4, steps=6, temperature=temperature, remasking=remasking)
    out = sampler.sample(tiny_model, prompts(), torch.Generator().manual_seed(0))
    step = out.decode_step
    assert (step >= 0).all() and (step < 6).all()
    assert (out.completion != tiny_model.mask_token_id).all()
    # 3 blocks x 2 steps; 4 masked tokens per block over 2 steps = 2 per step, every row
    for s in range(6):
        assert (step == s).sum(dim=1).tolist() == [2, 2, 2]
    for b in range(2):
        assert (step[:, 4 * b : 4 * b + 4].max(dim=1).values < step[:, 4 * (b + 1) : 4 * (b + 2)].min(dim=1).values).all()
    assert torch.equal(out.tokens[:, :4], prompts())


def test_committed_tokens_never_change(tiny_model) -> None:
    rec = Recorder(tiny_model)
    out = LowConfidenceSampler(gen_length=8, block_length=8, steps=8, temperature=1.0).sample(rec, prompts(), torch.Generator().manual_seed(1))
    final = out.tokens
    mask = tiny_model.mask_token_id
    for x in rec.inputs:
        committed = x != mask
        assert torch.equal(x[committed], final[committed])
    masked_counts = [(x == mask).sum().item() for x in rec.inputs]
    assert masked_counts == sorted(masked_counts, reverse=True) and len(set(masked_counts)) == len(masked_counts)


def test_same_seed_same_output_other_seed_differs(tiny_model) -> None:
    sampler = LowConfidenceSampler(gen_length=8, block_length=4, steps=8, temperature=1.0)
    a = sampler.sample(tiny_model, prompts(8), torch.Generator().manual_seed(3))
    b = sampler.sample(tiny_model, prompts(8), torch.Generator().manual_seed(3))
    c = sampler.sample(tiny_model, prompts(8), torch.Generator().manual_seed(4))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.decode_step, b.decode_step)
    assert not torch.equal(a.tokens, c.tokens)


def test_temperature_zero_is_greedy(tiny_model) -> None:
    """tau = 0 ignores the generator, and with one token per step it commits the position of
    highest confidence with its argmax token."""
    sampler = LowConfidenceSampler(gen_length=6, block_length=6, steps=6, temperature=0.0)
    p = prompts(2)
    a = sampler.sample(tiny_model, p, torch.Generator().manual_seed(0))
    b = sampler.sample(tiny_model, p, torch.Generator().manual_seed(99))
    assert torch.equal(a.tokens, b.tokens)
    x = torch.cat([p, torch.full((2, 6), tiny_model.mask_token_id)], dim=1)
    probs = torch.softmax(tiny_model(x)[:, 4:].float(), dim=-1)
    conf, token = probs.max(dim=-1)
    first = conf.argmax(dim=1)
    for row in range(2):
        pos = int(first[row])
        assert a.decode_step[row, pos] == 0
        assert a.completion[row, pos] == token[row, pos]


def test_classifier_free_guidance(tiny_model) -> None:
    p = prompts(2)
    plain = LowConfidenceSampler(8, 8, 8, cfg_scale=0.0).sample(tiny_model, p)
    guided = LowConfidenceSampler(8, 8, 8, cfg_scale=3.0).sample(tiny_model, p)
    rec = Recorder(tiny_model)
    LowConfidenceSampler(8, 8, 8, cfg_scale=3.0).sample(rec, p)
    batch = rec.inputs[0]
    assert batch.shape[0] == 4  # conditional and unconditional in one forward pass
    assert (batch[2:, :4] == tiny_model.mask_token_id).all()  # unconditional: prompt masked
    assert not torch.equal(plain.tokens, guided.tokens)


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(MaskGRPOError, match="block_length"):
        LowConfidenceSampler(gen_length=10, block_length=4)
    with pytest.raises(MaskGRPOError, match="steps"):
        LowConfidenceSampler(gen_length=8, block_length=4, steps=3)


def test_random_remasking_preset_is_registered(tiny_model) -> None:
    sampler = samplers.build({"type": "random_remasking", "gen_length": 4, "block_length": 4, "steps": 2})
    assert sampler.remasking == "random"
    out = sampler.sample(tiny_model, prompts(2), torch.Generator().manual_seed(0))
    assert (out.decode_step.sum(dim=1) == 2).all()  # two tokens at step 0, two at step 1
