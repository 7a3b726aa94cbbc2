"""Hand-made world scenes whose answers are known."""

from restore.zoo.world import Glyph, Obj, Scene

# Top-left large red circle, centre small red square, bottom-right large blue triangle, digit 7 at top right.
HAND = Scene(
    objects=(
        Obj("red", "circle", "large", 16, 16, 10),
        Obj("red", "square", "small", 48, 50, 5),
        Obj("blue", "triangle", "large", 80, 78, 10),
    ),
    glyph=Glyph(7, 80, 16),
    clutter=3,
)
