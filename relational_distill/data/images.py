"""Camera images, read safely: the header is checked (a known image format, a pixel count in bounds, the size the
tables record) before any pixel is decoded, so a damaged, foreign or decompression-bomb file is a one-line
:class:`UserError` naming it (docs/reliability.md)."""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError

MAX_IMAGE_PIXELS = 50_000_000  # a 12-megapixel camera is 12e6; importing nuscenes-devkit turns PIL's own guard off


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header alone."""
    with _opened(path) as im:
        return im.size


def read_rgb(path: Path, size: tuple[int, int] | None = None):
    """The image at ``path`` as an RGB PIL image; with ``size`` (width, height), an image of another size is refused."""
    with _opened(path) as im:
        if size is not None and im.size != tuple(size):
            raise UserError(f"{path}: {im.size[0]}x{im.size[1]} pixels, the dataset's tables say {size[0]}x{size[1]}; "
                            f"re-download or regenerate the dataset")
        try:
            return im.convert("RGB")
        except (OSError, ValueError, SyntaxError) as err:  # a truncated or corrupt pixel stream
            raise UserError(f"{path}: corrupt image data ({type(err).__name__}); re-download or regenerate it") from None


class _opened:
    """``with _opened(path) as im``: an opened PIL image whose header is sane."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __enter__(self):
        from PIL import Image

        try:
            self.image = Image.open(self.path)
        except FileNotFoundError:
            raise UserError(f"{self.path}: camera image missing; re-download or regenerate the dataset") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UserError(f"{self.path}: not a readable image ({type(err).__name__}); re-download or regenerate "
                            f"it") from None
        width, height = self.image.size
        if width <= 0 or height <= 0 or width * height > MAX_IMAGE_PIXELS:
            self.image.close()
            raise UserError(f"{self.path}: its header claims {width}x{height} pixels (allowed: 1 to "
                            f"{MAX_IMAGE_PIXELS:,}); the image is corrupt")
        return self.image

    def __exit__(self, *exc) -> None:
        self.image.close()
