"""Text in images: open an image within size limits and read its text with RapidOCR (offline, lazy).

Typographic jailbreaks (FigStep, MM-SafetyBench TYPO) write the harmful request into the image; the
input guard reads it here before the MLLM does. Images come as paths, bytes, PIL images or data URLs;
an image over the byte or pixel limit (a decompression bomb) is an `ImageTooLarge` error, never a crash.
RapidOCR's ONNX models ship in its wheel (`pip install 'mllm-protector[ocr]'`), so nothing is downloaded.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .errors import InputError, ProtectorError

if TYPE_CHECKING:
    from PIL import Image

ImageSource = Union[str, os.PathLike, bytes, "Image.Image"]

#: Largest encoded image accepted (bytes) and largest decoded image (pixels, as the proxy): a 6000 × 6000 photo fits,
#: a decompression bomb (a small PNG that decodes to gigapixels) does not.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
#: The OCR reads a copy whose longest side is at most this many pixels: typographic attacks use large
#: type (FigStep: ~80 px letters on 760 px), and detection time grows with the area. 400 keeps 40 px type
#: on an 800 × 1000 document legible (character accuracy 100% on the benign text images, 99.8% on FigStep
#: and TYPO; 320 loses a few characters of documents and saves nothing measurable).
OCR_MAX_SIDE = 400
#: Shape each text line is recognised at: height 48 (the model's), width at least 96. RapidOCR's default
#: pads every line to 320 px, and recognition time grows with the width: FigStep's "1." "2." "3." and its
#: wrapped short lines cost a third as much at 96 (CPU per FigStep image ~300 → ~200 ms, same accuracy).
REC_IMAGE_SHAPE = (3, 48, 96)
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


class ImageTooLarge(InputError):
    """An image over the byte or pixel limit (e.g. a decompression bomb)."""


@dataclass(frozen=True)
class ImageLimits:
    """How large an image the guard opens: encoded bytes and decoded pixels."""

    max_bytes: int = MAX_IMAGE_BYTES
    max_pixels: int = MAX_IMAGE_PIXELS


def image_bytes(image: str | os.PathLike[str] | bytes, limits: ImageLimits) -> bytes:
    """The encoded bytes of a path, a base64 data URL or raw bytes, refused beyond `limits.max_bytes`."""
    if isinstance(image, bytes):
        data = image
    elif isinstance(image, str) and _DATA_URL.match(image):
        payload = image[image.index(",") + 1:]
        if len(payload) * 3 // 4 > limits.max_bytes:
            raise ImageTooLarge(f"image data URL is over the {limits.max_bytes:,}-byte limit")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputError(f"image data URL is not valid base64: {exc}") from exc
    elif isinstance(image, str) and image.startswith("data:"):
        raise InputError("image data URL must look like data:image/<type>;base64,<data>")
    else:
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image file {path} not found")
        if path.stat().st_size > limits.max_bytes:
            raise ImageTooLarge(f"image file {path} is over the {limits.max_bytes:,}-byte limit")
        data = path.read_bytes()
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image is over the {limits.max_bytes:,}-byte limit")
    return data


def open_image(image: ImageSource, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """An RGB PIL image from a path, bytes, PIL image or data URL; its pixel count is checked before decoding."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        _check_pixels(image.size, limits)
        return image.convert("RGB")
    data = image_bytes(image, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                _check_pixels(img.size, limits)  # the header is read; the pixels are not decoded yet
                return img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image is a decompression bomb: {exc}") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read the image: {exc}") from exc


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"image is {width} × {height} = {width * height:,} pixels, over the {limits.max_pixels:,}-pixel limit")


@dataclass
class OCRResult:
    """Text read from one image: `lines` in reading order, joined into `text`, and timings in ms."""

    lines: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(line.strip() for line in self.lines if line.strip())


class ImageReader:
    """Reads the text in images with RapidOCR; the engine loads on the first image (thread-safe)."""

    def __init__(self, max_side: int = OCR_MAX_SIDE, min_confidence: float = 0.5, threads: int = 1,
                 limits: ImageLimits = ImageLimits()):
        self.max_side = max_side
        self.min_confidence = min_confidence
        self.threads = threads
        self.limits = limits
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        """RapidOCR without the rotation classifier (typed text is upright), recognising one line at a time
        (batched lines are padded to the widest, which costs more than it saves on short lines), each line
        padded only to `REC_IMAGE_SHAPE`'s width."""
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise ProtectorError("the input guard reads images with rapidocr-onnxruntime: pip install 'mllm-protector[ocr]'") from exc
        return RapidOCR(use_cls=False, det_limit_side_len=32, det_limit_type="min", rec_batch_num=1, rec_img_shape=list(REC_IMAGE_SHAPE),
                        intra_op_num_threads=self.threads, inter_op_num_threads=1, text_score=self.min_confidence)

    def read(self, image: ImageSource) -> OCRResult:
        """The text in `image` (path, bytes, PIL image or data URL); InputError when it cannot be opened."""
        import numpy as np

        t0 = time.perf_counter()
        img = open_image(image, self.limits)
        img.thumbnail((self.max_side, self.max_side))
        pixels = np.asarray(img)[:, :, ::-1]  # RapidOCR expects OpenCV's BGR order
        decode_ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            if self._engine is None:
                self._engine = self._load()
            t1 = time.perf_counter()
            found, _ = self._engine(pixels, use_cls=False)
        ocr_ms = (time.perf_counter() - t1) * 1000
        lines = [str(item[1]) for item in found or [] if float(item[2]) >= self.min_confidence]
        return OCRResult(lines, {"decode_ms": decode_ms, "ocr_ms": ocr_ms})
