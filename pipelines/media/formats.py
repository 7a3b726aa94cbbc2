"""Which files a folder or glob listing keeps: image and video extensions, and when a path is a glob.

The image list is derived from the installed Pillow, so every picture format it
can decode is labeled (and one it cannot is not listed only to fail later):

    image_extensions() = the extensions Pillow registers for a format that
      1. it can open AND decode itself: not a stub plugin (BUFR, GRIB, HDF5,
         WMF on Linux only identify a file and need an external handler), not
         MPEG (identified, no decoder), not EPS (needs Ghostscript), and with
         its codec compiled in (JPEG, JPEG 2000, PNG, WebP, AVIF);
      2. holds a picture a user would label, which leaves out documents and
         metadata (EPS/PS, PDF, IPTC), scientific data (FITS), animation-only
         FLI/FLC, and software assets that fill source trees: icons and
         cursors (ICO, CUR, ICNS, XBM, XPM), brushes (GBR) and game textures
         (DDS, BLP, FTEX).

A plugin registered with Pillow (e.g. pillow-heif's `.heic`/`.heif`) is picked
up by rule 1 without a change here. A file passed explicitly (one path, not a
folder or a glob) is kept whatever its extension; the decoder has the last word.
Video extensions are those FFmpeg (PyAV) decodes that are used for videos, and
never overlap the image list (Pillow's MPEG stub is excluded for that reason too).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from PIL import Image, ImageFile, features

VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mov", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ogv",
)

# Pillow format names left out by rule 2 (and EPS/MPEG by rule 1), grouped as in the module docstring.
_NOT_LABELED = frozenset(
    {
        "EPS", "PDF", "IPTC",  # documents, vector drawings (EPS needs Ghostscript), metadata
        "MPEG",  # identified only, never decoded; a video
        "FITS",  # scientific data arrays
        "FLI",  # animation-only (Autodesk FLI/FLC)
        "ICO", "CUR", "ICNS", "XBM", "XPM",  # icons and cursors
        "GBR",  # GIMP brushes
        "DDS", "BLP", "FTEX",  # game textures
    }
)

# The Pillow feature (module or codec) a format needs to decode pixels.
_NEEDS = {"JPEG": "jpg", "MPO": "jpg", "JPEG2000": "jpg_2000", "PNG": "zlib", "WEBP": "webp", "AVIF": "avif"}

_GLOB_CHARS = frozenset("*?[")


def _available(fmt: str) -> bool:
    """Whether Pillow can decode `fmt` (codec compiled in); a feature this Pillow does not know passes."""
    name = _NEEDS.get(fmt)
    if name is None or name not in {*features.modules, *features.codecs, *features.features}:
        return True  # e.g. AVIF registered by a third-party plugin on a Pillow without built-in AVIF
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(features.check(name))


def _decodable(fmt: str) -> bool:
    # MPO (multi-picture JPEG from cameras) has no opener of its own: the JPEG opener returns it.
    opener = Image.OPEN.get("JPEG" if fmt == "MPO" else fmt)
    if opener is None:
        return False
    factory = opener[0]
    if isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile):
        return False
    return _available(fmt)


def image_extensions() -> tuple[str, ...]:
    """Lower-case extensions (with the dot, sorted) of the image formats labeled; see the module docstring."""
    Image.init()  # load every plugin, including those registered after PIL was first imported
    exts = {
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt not in _NOT_LABELED and _decodable(fmt)
    }
    return tuple(sorted(exts - set(VIDEO_EXTENSIONS)))


def is_explicit_glob(path: str, exists: Callable[[str], bool]) -> bool:
    """Whether `path` is a glob: it has `*`, `?` or `[` and no such file or folder exists.

    A path that exists is literal even with those characters (`photo[1].jpg`),
    so it is never expanded into other files. `exists` is only called when the
    path has glob characters (e.g. `fs.exists` of an fsspec filesystem).
    """
    return bool(_GLOB_CHARS & set(path)) and not exists(path)
