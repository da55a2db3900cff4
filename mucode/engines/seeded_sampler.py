"""Sampling where every row of a batch draws from its own seeded random stream.

Batched ``model.generate`` normally draws all rows from one generator, so a row's sample
depends on which rows share its batch. Here each row carries its own ``torch.Generator``
(seeded per draw, see ``mucode.engines.sampling``) and takes ONE uniform number per step,
which picks the token by inverting the cumulative distribution of the temperature/top-p
probabilities. Used as a logits processor under greedy ``generate``, it leaves only the
sampled token finite, so the argmax is an exact sample and each row's draws do not depend
on the batch around it. One number per row per step (not one per vocabulary entry) keeps
it cheap on CPU.

This module does not run the model; it only transforms next-token scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_from_probs(probs: torch.Tensor, uniforms: torch.Tensor, top_p: float) -> torch.Tensor:
    """One token id per row, sampled from ``probs`` restricted to the top-p nucleus.

    ``probs`` may be unnormalised non-negative weights. ``uniforms`` holds one number in
    (0, 1] per row. The nucleus is the smallest set of most likely tokens whose
    probability reaches ``top_p``; the most likely token is always in it. Cumulative sums
    are in float64 so tail tokens keep their probability.
    """
    if top_p >= 1.0:
        cumulative = probs.double().cumsum(dim=-1)
        targets = uniforms.double().unsqueeze(-1) * cumulative[:, -1:]
        picked = torch.searchsorted(cumulative, targets).clamp_(max=probs.shape[-1] - 1)
        return picked.squeeze(-1)
    sorted_probs, sorted_ids = torch.sort(probs, dim=-1, descending=True)
    cumulative = sorted_probs.double().cumsum(dim=-1)
    total = cumulative[:, -1:]
    # A token is in the nucleus unless the more likely tokens already reach top_p.
    in_nucleus = (cumulative - sorted_probs.double()) < top_p * total
    kept = in_nucleus.sum(dim=-1, keepdim=True)
    nucleus_mass = cumulative.gather(-1, kept - 1)
    targets = uniforms.double().unsqueeze(-1) * nucleus_mass
    position = torch.minimum(torch.searchsorted(cumulative, targets), kept - 1)
    return sorted_ids.gather(-1, position).squeeze(-1)


def one_hot_scores(scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Scores that are 0 at each row's chosen token and ``-inf`` elsewhere (argmax = it)."""
    chosen = torch.full_like(scores, float("-inf"))
    return chosen.scatter_(-1, token_ids.unsqueeze(-1), 0.0)


class SeededSampler:
    """A logits processor that samples each row with its own seeded generator."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device: torch.device | str) -> None:
        if temperature <= 0.0:
            raise ValueError("SeededSampler needs temperature > 0; use greedy decoding for 0")
        self.temperature = temperature
        self.top_p = top_p
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def next_uniforms(self, device: torch.device) -> torch.Tensor:
        """One number in (0, 1] per row, each from that row's own stream."""
        draws = [torch.rand(1, generator=generator, device=generator.device) for generator in self.generators]
        # rand gives [0, 1); 1 - u is in (0, 1], so a zero-probability token is never hit.
        return 1.0 - torch.cat(draws).to(device)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(f"batch has {scores.shape[0]} rows but {len(self.generators)} seeds")
        # Unnormalised weights suffice: sample_from_probs scales by the total mass.
        scaled = scores.float() / self.temperature
        weights = torch.exp(scaled - scaled.max(dim=-1, keepdim=True).values)
        token_ids = sample_from_probs(weights, self.next_uniforms(scores.device), self.top_p)
        return one_hot_scores(scores, token_ids)
