"""RESTORE's rectifications (DESIGN §2): merge anchors (`anchors`), positions (`positions`), attention
calibration (`calibration`); `assignment` is the slot map they share with the base methods."""
