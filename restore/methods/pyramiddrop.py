"""`pyramiddrop`: PyramidDrop — drop visual tokens in stages, more in deeper layers.

Source: Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models
via Pyramid Visual Redundancy Reduction", CVPR 2025.
Where: in-LLM, at several decoder layers (default 8, 16, 24 of LLaVA-1.5-7B's 32):
shallow layers see every token, each later stage a smaller set.
Score: at each stage, the attention the last prompt (instruction) token pays to
each remaining visual token in the layer before the stage, averaged over heads;
the top tokens survive.
Defaults: layers (8, 16, 24). The paper drops a fixed ratio lambda = 0.5 per
stage; here the budget n fixes the tokens after the last stage and the stages
shrink geometrically, lambda = (n/N)^(1/S), which is 0.5 for n = N/8 over three
stages. Positions of the original code: 'original' (kept tokens keep their
position ids).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from restore.methods import register
from restore.methods.base import ascending_layers
from restore.methods.fastv import FastV


class PyramidDropOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    layers: tuple[int, ...] = Field(
        (8, 16, 24), description="Decoder layers that start each new stage (ascending, >= 1)."
    )

    _ascending = field_validator("layers")(ascending_layers)


@register
class PyramidDrop(FastV):
    """FastV's score, applied at every stage."""

    name = "pyramiddrop"
    description = "in-LLM, staged: keep the tokens the last prompt token attends to, fewer at each stage"
    default_layer = 8
    Options = PyramidDropOptions

    def layers(self, layer: int | None, options: PyramidDropOptions) -> list[int]:
        if layer is not None:
            raise ValueError("pyramiddrop sets its stages with options.layers, not ReductionConfig.layer")
        return list(options.layers)
