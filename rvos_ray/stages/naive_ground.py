"""Naive feature-similarity grounding: the paper's ablation baseline (Table 3, rows 1-2).

"implements the grounding module as a naive feature similarity operation": instead of the
Transformer head (Eq. 6), each tracklet's per-frame score is the cosine similarity between its
mask-pooled visual feature (Eq. 5) and the expression's mean word feature, both projected to D
by the variant's own projections; a softmax over the tracklets present on the frame, with
temperature :data:`SIMILARITY_TEMPERATURE`, gives s_p^t (a tracklet absent from a frame gets 0
there). s_p, the ensemble and the argmax are unchanged.

Everything else (frames read once, backbones shared and run once per frame, text encoders once
per expression, the grounding table) is :class:`rvos_ray.models.grounder_group.GrounderGroup`; only the
scoring step differs, so the ablation isolates exactly the Transformer's contribution. Selected
with ``grounding.method: similarity``; a variant's ``head`` weights are built but unused.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from rvos_ray.models.grounder import Grounder, masked_softmax
from rvos_ray.models.grounder_group import GrounderGroup

__all__ = ["SIMILARITY_TEMPERATURE", "SimilarityGrounderGroup", "similarity_probs"]

SIMILARITY_TEMPERATURE = 0.1  # cosine / T before the softmax (cosines live in [-1, 1])


def similarity_probs(vis: torch.Tensor, present: torch.Tensor, words: torch.Tensor, word_valid: torch.Tensor,
                     temperature: float = SIMILARITY_TEMPERATURE) -> torch.Tensor:
    """(E, n, P) probabilities from projected tracklet features ``vis`` (n, P, D) with
    ``present`` (n, P) and projected word features ``words`` (E, L, D) with ``word_valid`` (E, L)."""
    w = word_valid.to(words.dtype).unsqueeze(-1)
    sentence = (words * w).sum(1) / w.sum(1).clamp_min(1.0)  # (E, D): mean over real words
    cos = torch.einsum("npd,ed->enp", F.normalize(vis, dim=-1), F.normalize(sentence, dim=-1))
    valid = present.unsqueeze(0).expand_as(cos)
    return masked_softmax(cos / temperature, valid)


class SimilarityGrounderGroup(GrounderGroup):
    """:class:`GrounderGroup` with the Transformer head replaced by cosine similarity."""

    def _score(self, v: Grounder, pooled, present, words, word_valid, geometry) -> torch.Tensor:
        n, P, _ = pooled.shape
        probs = similarity_probs(v.visual.project(pooled), present, v.text.project(words), word_valid)
        self.counts.head_pairs[v.name] += words.shape[0] * n
        return probs
