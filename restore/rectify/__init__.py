"""RESTORE's rectifications (DESIGN §2): merge anchors, positions, attention calibration."""

from restore.rectify.anchors import distinctive_anchors, restore_assignment
from restore.rectify.assignment import Assignment
from restore.rectify.calibration import RopeSpec, calibration_bias, relative_decay
from restore.rectify.positions import slot_positions

__all__ = [
    "Assignment",
    "RopeSpec",
    "calibration_bias",
    "distinctive_anchors",
    "relative_decay",
    "restore_assignment",
    "slot_positions",
]
