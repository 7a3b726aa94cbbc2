"""The shared currency of reduction: one image's visual tokens as a method sees them (`ImageTokens`),
which output slot each token goes to (`Assignment`), and the selection helpers the methods share.

Below both `restore.methods` and `restore.rectify`: imports run tokens -> methods -> rectify -> plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageTokens:
    """One image's (or video span's) visual tokens, as a method sees them.

    features:   (N, d) features the LLM sees: projector outputs before the LLM,
                hidden states for in-LLM methods.
    importance: (N,) attention mass each token receives from the vision tower's
                CLS query (pre-LLM) or from the last prompt token at layer K-1
                (in-LLM); None when the model has neither.
    keys:       (N, dk) vision-tower keys for pre-LLM methods that measure
                similarity there; None when not available (always None in-LLM).
    grid:       (T, H, W) when the tokens are a row-major T x H x W grid, else None.
    text:       (M, d) input embeddings of the prompt's text after the last visual span (the
                instruction), for pre-LLM methods conditioned on it; None in-LLM or when none follows.
    layer_keys: (N, h*d_h) in-LLM only: the tokens' keys in decoder layer K-1 (the
                last layer that sees every token), heads concatenated, after RoPE
                (a rotation, so each head's key norm is RoPE-free); None unless the
                method asks for them (`Method.needs_layer_keys`).
    text_attention: (T, N) in-LLM only: the attention each of the T text tokens after
                the span (prompt text, in order) pays to each of the span's tokens at
                layer K-1, averaged over heads; None unless the method asks for it
                (`Method.needs_text_attention`).
    """

    features: torch.Tensor
    importance: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    grid: tuple[int, int, int] | None = None
    text: torch.Tensor | None = None
    layer_keys: torch.Tensor | None = None
    text_attention: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.features.shape[0]

    def grid_coords(self) -> torch.Tensor:
        """(N, 3) float (t, row, col) of each token; a single row when there is no grid."""
        n = self.num_tokens
        if self.grid is None:
            return torch.stack([torch.zeros(n), torch.zeros(n), torch.arange(n, dtype=torch.float32)], dim=1)
        t, h, w = self.grid
        idx = torch.arange(n)
        return torch.stack([idx // (h * w), (idx // w) % h, idx % w], dim=1).float()


@dataclass(frozen=True)
class Assignment:
    """slot[i] in [0, num_slots) is token i's output slot, -1 when it is dropped.

    Slots are emitted in slot order; `rep[s]` is the token whose identity slot s
    carries (the kept token itself, or a merge anchor), used by the 'original'
    position policy and for display. `weights` (N,), when set, scale each token's
    share of its slot's merged feature (e.g. PruMerge's attention-weighted means);
    sizes still count members.
    """

    slot: torch.Tensor  # (N,) long
    rep: torch.Tensor  # (n,) long
    weights: torch.Tensor | None = None  # (N,) float, merge weights on top of sizes

    @property
    def num_slots(self) -> int:
        return self.rep.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.slot.shape[0]

    @staticmethod
    def keep(indices: torch.Tensor, num_tokens: int) -> Assignment:
        indices = torch.sort(indices.long()).values
        slot = torch.full((num_tokens,), -1, dtype=torch.long)
        slot[indices] = torch.arange(indices.numel())
        return Assignment(slot=slot, rep=indices)

    @staticmethod
    def absorb(num_tokens: int, kept: torch.Tensor, anchors: torch.Tensor, members: torch.Tensor, owner: torch.Tensor) -> Assignment:
        """Kept tokens alone in their slots; `members[i]` joins the slot of `anchors[owner[i]]`.

        Slots follow token order of their representatives (kept tokens and anchors), so the
        reduced sequence keeps the image's reading order.
        """
        rep = torch.sort(torch.cat([kept, anchors])).values
        slot_of_rep = torch.full((num_tokens,), -1, dtype=torch.long)
        slot_of_rep[rep] = torch.arange(rep.numel())
        slot = torch.full((num_tokens,), -1, dtype=torch.long)
        slot[kept] = slot_of_rep[kept]
        slot[members] = slot_of_rep[anchors[owner]]
        return Assignment(slot=slot, rep=rep)

    @staticmethod
    def identity(num_tokens: int) -> Assignment:
        return Assignment.keep(torch.arange(num_tokens), num_tokens)

    def sizes(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(n,) total size of each slot: member count, or the sum of member weights."""
        w = torch.ones(self.num_tokens) if weights is None else weights.float()
        live = self.slot >= 0
        return torch.zeros(self.num_slots, dtype=w.dtype, device=w.device).index_add_(
            0, self.slot[live].to(w.device), w[live.to(w.device)]
        )

    def merge(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(n, ...) mean of each slot's members' rows of x (N, ...), weighted by `weights` (sizes) times
        `self.weights`."""
        live = self.slot >= 0
        idx = self.slot[live].to(x.device)
        w = torch.ones(self.num_tokens, device=x.device) if weights is None else weights.to(x.device).float()
        if self.weights is not None:
            w = w * self.weights.to(x.device).float()
        w = w[live.to(x.device)]
        shape = (self.num_slots, *x.shape[1:])
        acc = torch.zeros(shape, dtype=torch.float32, device=x.device)
        wx = x[live.to(x.device)].float() * w.view(-1, *([1] * (x.dim() - 1)))
        acc.index_add_(0, idx, wx)
        total = torch.zeros(self.num_slots, dtype=torch.float32, device=x.device).index_add_(0, idx, w)
        return (acc / total.view(-1, *([1] * (x.dim() - 1)))).to(x.dtype)

    def members(self, s: int) -> torch.Tensor:
        return torch.nonzero(self.slot == s).flatten()


def budget_share(n: int, ratio: float) -> int:
    """Slots of a budget of n given to a method's merged tokens: round(n * ratio), at least 0, fewer than n."""
    return min(max(round(n * ratio), 0), n - 1)


def topk_sorted(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, ascending by index; ties broken by lower index."""
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    return torch.sort(order).values
