"""RESTORE's rectifications (DESIGN §2): merge anchors (`anchors`), positions (`positions`), attention
calibration (`calibration`). The slot map they share with the base methods is `restore.tokens.Assignment`."""
