"""YUV -> RGB straight into a caller's array: PyAV's own libswscale, called through ctypes.

PyAV's ``VideoReformatter`` returns a new frame, which ``read_frames`` then copies into its
output array: on a 480p clip that copy costs about a quarter of the decode (memory bandwidth, not
arithmetic). ``sws_scale`` writes wherever it is told, so here it writes into the output slot
itself, as ffmpeg writes into its own frame pool. The library is the one bundled with PyAV (its
pixel-format and colour enums are the decoder's), the call releases the GIL (ctypes), and the
pixels equal the reformatter's: the same scaler flags and colour matrix, checked by the tests.

Only the common case takes this path: 8-bit 4:2:0 (``yuv420p`` / ``yuvj420p``) in a colour space
and range the matrix below covers, at the frame's own size (scaled, the two swscale paths round
differently) and a width that is a multiple of 16 (its SIMD writes 16 pixels at a time: a 330 or
856 pixel row spills 18 or 24 bytes past the array's end). Anything else, or no bundled library,
gets ``None`` from :func:`rgb_writer` and the caller converts with PyAV.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from collections.abc import Callable

import numpy as np

PIX_FMT = {"yuv420p": 0, "yuvj420p": 12}  # AVPixelFormat, stable across FFmpeg versions
RGB24 = 2
SWS_BILINEAR = 2  # PyAV's default interpolation
# AVColorSpace of the frame -> SWS_CS_* coefficients, as PyAV's reformatter resolves them
# (an untagged frame is BT.601, swscale's default).
COLORSPACE = {1: 1, 2: 5, 5: 5, 6: 5}  # BT709, unspecified, BT470BG, SMPTE170M
FULL_RANGE = 2  # AVCOL_RANGE_JPEG
SIMD_PIXELS = 16  # rows are written in blocks of this many pixels


@functools.cache
def _lib() -> ctypes.CDLL | None:
    """PyAV's bundled libswscale (wheels ship it under ``av.libs``), or None."""
    import av

    pattern = os.path.join(os.path.dirname(av.__file__), os.pardir, "av.libs", "libswscale*.so*")
    found = sorted(glob.glob(pattern))
    if not found:
        return None
    try:
        lib = ctypes.CDLL(found[0])
    except OSError:
        return None
    p, i = ctypes.c_void_p, ctypes.c_int
    lib.sws_getContext.restype = p
    lib.sws_getContext.argtypes = [i, i, i, i, i, i, i, p, p, p]
    lib.sws_scale.restype = i
    lib.sws_scale.argtypes = [p, p, p, i, i, p, p]
    lib.sws_freeContext.argtypes = [p]
    lib.sws_getCoefficients.restype = ctypes.POINTER(i)
    lib.sws_getCoefficients.argtypes = [i]
    lib.sws_setColorspaceDetails.restype = i
    lib.sws_setColorspaceDetails.argtypes = [p, ctypes.POINTER(i), i, ctypes.POINTER(i), i, i, i, i]
    return lib


class _Context:
    """One SwsContext for a (source, destination) geometry and colour; freed with the object."""

    def __init__(self, lib: ctypes.CDLL, src: tuple[int, int, int], dst: tuple[int, int], cs: int, full: bool):
        self.lib = lib
        self.ptr = lib.sws_getContext(*src, dst[0], dst[1], RGB24, SWS_BILINEAR, None, None, None)
        if not self.ptr:
            raise RuntimeError("sws_getContext failed")
        coef = lib.sws_getCoefficients(cs)
        # brightness 0, contrast and saturation 1.0 (16.16 fixed point): the defaults, colour matrix set
        if lib.sws_setColorspaceDetails(self.ptr, coef, int(full), coef, 1, 0, 1 << 16, 1 << 16) < 0:
            raise RuntimeError("sws_setColorspaceDetails failed")
        self.src_ptrs = (ctypes.c_void_p * 4)()
        self.src_strides = (ctypes.c_int * 4)()
        self.dst_ptrs = (ctypes.c_void_p * 4)()
        self.dst_strides = (ctypes.c_int * 4)(dst[0] * 3, 0, 0, 0)
        self.height = src[1]

    def __call__(self, frame, out: np.ndarray) -> bool:
        for k, plane in enumerate(frame.planes[:3]):
            self.src_ptrs[k], self.src_strides[k] = plane.buffer_ptr, plane.line_size
        self.dst_ptrs[0] = out.ctypes.data
        ret = self.lib.sws_scale(
            self.ptr, self.src_ptrs, self.src_strides, 0, self.height, self.dst_ptrs, self.dst_strides
        )
        return ret >= 0

    def __del__(self):
        if getattr(self, "ptr", None):
            self.lib.sws_freeContext(self.ptr)
            self.ptr = None


def _supported(frame) -> tuple[int, int, bool] | None:
    fmt = PIX_FMT.get(frame.format.name)
    cs = int(frame.colorspace)
    if fmt is None or cs not in COLORSPACE:
        return None
    full = frame.format.name == "yuvj420p" or int(frame.color_range) == FULL_RANGE
    return fmt, COLORSPACE[cs], full


def rgb_writer(frame, width: int, height: int) -> Callable[..., bool] | None:
    """A function ``(frame, out) -> bool`` writing frames shaped like ``frame`` as rgb24 into ``out`` (a
    C-contiguous (height, width, 3) uint8 array), or None when this path does not cover the frame
    or the size asked is not its own. Each calling thread needs its own writer (a context is not
    thread-safe)."""
    if (width, height) != (frame.width, frame.height) or width % SIMD_PIXELS:
        return None
    lib, spec = _lib(), _supported(frame)
    if lib is None or spec is None:
        return None
    fmt, cs, full = spec
    key = (frame.width, frame.height, spec)
    try:
        ctx = _Context(lib, (frame.width, frame.height, fmt), (width, height), cs, full)
    except RuntimeError:  # swscale refused the setup: PyAV's path, which reports its own errors
        return None

    def write(f, out: np.ndarray) -> bool:
        """Convert ``f`` into ``out``; False for a frame of another geometry or colour, or one swscale
        fails on (the caller converts those with PyAV, which names its error)."""
        if (f.width, f.height, _supported(f)) != key:
            return False
        if not out.flags.c_contiguous or out.shape != (height, width, 3) or out.dtype != np.uint8:
            raise ValueError(f"out must be a C-contiguous ({height}, {width}, 3) uint8 array")
        return ctx(f, out)

    return write
