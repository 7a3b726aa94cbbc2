"""`prunesid`: PruneSID — group tokens by principal semantic components, then non-maximum suppression per group.

Source: Fang et al., "Prune Redundancy, Preserve Essence: Vision Token
Compression in VLMs via Synergistic Importance-Diversity" (PruneSID), arXiv
2603.09480 (March 2026), ICLR 2026.
Where: pre-LLM, on the projected visual tokens; needs no attention scores.
Algorithm (the paper's two stages):
1. Principal Semantic Components Analysis: with X the centred features (N, d)
   and X = U diag(s) V^T its SVD, token i's loading on component g is
   P_ig = U_ig s_g = (X V)_ig (its projection on the g-th principal direction;
   computed from the eigenvectors of the smaller of X X^T and X^T X), for the top
   G = min(components, rank) components. Token i joins group
   g(i) = argmax_g |P_ig|, and its importance is a_i = |P_i,g(i)| (how strongly it
   carries that concept).
2. Intra-group NMS: group g gets a share of the budget proportional to its size
   (largest remainder, capped by the group's size, summing to exactly k). Within
   a group, tokens are visited by importance, best first; a token is kept unless
   its cosine similarity to a token already kept in the group exceeds
   `nms_threshold`. When suppression leaves a group short of its share, the
   suppressed tokens fill it in importance order, so the budget is always met.
Defaults: components = 8, nms_threshold = 0.8; ties go to the lower index.
Positions of the original code: 'compact' (it rebuilds the visual sequence).
Differences from the paper: the stored paper text available when this was
written covered its abstract only, so the concrete rules above (group by the
largest absolute loading, budget share by group size, the threshold test and the
two defaults) are this module's reading of the two stages it describes, not the
paper's stated values. The paper's information-aware dynamic compression ratio
(a per-image budget set by image complexity, equal on average) is left out: the
engine gives every image the budget its request asks for, which RESTORE and the
KV-cache admission count on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from restore.methods import register
from restore.methods.base import Method
from restore.methods.holov import allocate
from restore.tokens import ImageTokens


class PruneSIDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    components: int = Field(8, ge=1, description="Principal semantic components, i.e. token groups (at most the "
                            "features' rank).")
    nms_threshold: float = Field(
        0.8, ge=-1.0, le=1.0,
        description="Cosine similarity above which a token is suppressed by a better token kept in its group.",
    )


def principal_groups(features: torch.Tensor, components: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(group (N,) long, importance (N,)): each token's strongest principal component and its |loading| there."""
    x = features.detach().float()
    xc = x - x.mean(dim=0, keepdim=True)
    num, dim = xc.shape
    # P = U diag(s) = Xc V from the smaller Gram matrix's eigenvectors: an SVD of a 576 x 4096 matrix is 10x slower.
    if num <= dim:
        lam, vec = torch.linalg.eigh((xc @ xc.T).double())
    else:
        lam, vec = torch.linalg.eigh((xc.T @ xc).double())
    lam, vec = lam.flip(0).clamp_min(0.0), vec.flip(1)  # descending
    rank = int((lam > lam[0] * 1e-6).sum()) if lam[0] > 0 else 0
    if rank == 0:  # identical tokens: one group, no token more principal than another
        return torch.zeros(num, dtype=torch.long, device=x.device), torch.zeros(num, device=x.device)
    g = min(components, rank)
    top = vec[:, :g].float()
    loading = top * lam[:g].sqrt().float() if num <= dim else xc @ top
    importance, group = loading.abs().max(dim=1)  # sign-free: an eigenvector's sign is arbitrary
    return group, importance


def group_nms(x: torch.Tensor, importance: torch.Tensor, quota: int, threshold: float) -> list[int]:
    """Local indices of `quota` rows of unit rows x: best-first, skipping rows too similar to a kept one."""
    order = torch.argsort(importance, descending=True, stable=True).tolist()
    kept: list[int] = []
    suppressed: list[int] = []
    for i in order:
        if len(kept) == quota:
            break
        if kept and float((x[kept] @ x[i]).max()) > threshold:
            suppressed.append(i)
        else:
            kept.append(i)
    return kept + suppressed[: quota - len(kept)]


def prunesid_select(features: torch.Tensor, k: int, components: int, threshold: float) -> torch.Tensor:
    num = features.shape[0]
    if k >= num:
        return torch.arange(num)
    group, importance = principal_groups(features, components)
    x = F.normalize(features.detach().float(), dim=-1)
    sizes = torch.bincount(group).tolist()
    quotas = allocate([float(s) for s in sizes], sizes, k)
    kept = []
    for g, quota in enumerate(quotas):
        if quota == 0:
            continue
        members = torch.nonzero(group == g).flatten()  # ascending: stable ties go to the lower index
        local = group_nms(x[members], importance[members], quota, threshold)
        kept.append(members[torch.tensor(local, device=members.device)])
    return torch.sort(torch.cat(kept)).values.cpu()


@register
class PruneSID(Method):
    name = "prunesid"
    stage = "pre"
    description = "principal-component groups of the projected tokens, then non-maximum suppression per group"
    author_positions = "compact"
    Options = PruneSIDOptions

    def select(self, tokens: ImageTokens, k: int, options: PruneSIDOptions) -> torch.Tensor:
        return prunesid_select(tokens.features, k, options.components, options.nms_threshold)
