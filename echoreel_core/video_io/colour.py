"""Colour of decoded frames: HDR tone mapping to SDR BT.709, and alpha over a background.

SDR frames (BT.601/709/..., limited or full range) are converted to RGB by FFmpeg's swscale,
which reads the matrix and range the stream declares (BT.601 when it declares none, as FFmpeg
and decord do). This module handles what swscale does not:

HDR (transfer HLG, ARIB STD-B67, or PQ, SMPTE ST 2084; primaries BT.2020) is tone mapped to SDR
BT.709 by this operator, applied per pixel:
1. Y'CbCr (limited or full range, the declared matrix: BT.2020 non-constant luminance for HDR)
   to non-linear R'G'B'.
2. To display light in cd/m²: PQ by its EOTF; HLG by its inverse OETF and the BT.2100 reference
   OOTF for a 1000 cd/m² display (system gamma 1.2, applied on the scene luminance).
3. Divided by the HDR reference white, 203 cd/m² (ITU-R BT.2408): 1.0 is SDR white.
4. BT.2020 to BT.709 primaries (the linear matrix of ITU-R BT.2087); negative components, the
   colours outside BT.709, are clipped to 0.
5. A highlight roll-off on the largest component m, scaling the three alike (hue kept): m is
   kept below KNEE (0.8), above it m -> KNEE + (1 - KNEE) * (1 - exp(-(m - KNEE) / (1 - KNEE))),
   which is smooth at the knee and tends to 1. HDR reference white (m = 1) becomes 0.926.
6. Encoded for an SDR display with the BT.1886 EOTF (gamma 2.4): V = L ** (1 / 2.4).
So colours up to 80% of reference white keep their SDR values exactly (tests check them within
4/255, the error of 10-bit 4:2:0 coding), reference white comes out at 247/255, and highlights
up to the 1000 cd/m² peak roll off towards 255.

Alpha (yuva, rgba, argb, paletted GIF transparency, animated WebP) is composited over
ALPHA_BACKGROUND, black: the output is colour * alpha.
"""

from __future__ import annotations

import numpy as np

ALPHA_BACKGROUND = (0.0, 0.0, 0.0)

# FFmpeg's AVColorTransferCharacteristic / AVColorSpace / AVColorPrimaries / AVColorRange values
TRC_PQ, TRC_HLG = 16, 18
HDR_TRANSFERS = {TRC_PQ: "PQ", TRC_HLG: "HLG"}
PRIMARIES_BT2020 = 9
RANGE_FULL = 2
# Kr, Kb of each matrix FFmpeg may report (AVColorSpace); unknown or unspecified: BT.601.
_MATRIX = {
    1: (0.2126, 0.0722),    # BT.709
    4: (0.30, 0.11),        # FCC
    5: (0.299, 0.114),      # BT.470BG (BT.601 625)
    6: (0.299, 0.114),      # SMPTE 170M (BT.601 525)
    7: (0.212, 0.087),      # SMPTE 240M
    9: (0.2627, 0.0593),    # BT.2020 non-constant luminance
    10: (0.2627, 0.0593),   # BT.2020 constant luminance (decoded as non-constant: rare)
}

REFERENCE_WHITE = 203.0  # cd/m², ITU-R BT.2408 HDR reference white
HLG_PEAK = 1000.0        # cd/m², the display the HLG reference OOTF is taken for
HLG_GAMMA = 1.2          # BT.2100 system gamma at 1000 cd/m²
KNEE = 0.8               # roll-off starts at 80% of reference white
SDR_GAMMA = 2.4          # BT.1886

_HLG_A, _HLG_B, _HLG_C = 0.17883277, 0.28466892, 0.55991073
_PQ_M1, _PQ_M2 = 2610 / 16384, 2523 / 4096 * 128
_PQ_C1, _PQ_C2, _PQ_C3 = 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
_BT2020_LUMA = np.array([0.2627, 0.6780, 0.0593], dtype=np.float32)
BT2020_TO_BT709 = np.array([[1.6605, -0.5876, -0.0728],
                            [-0.1246, 1.1329, -0.0083],
                            [-0.0182, -0.1006, 1.1187]], dtype=np.float32)


def yuv_to_rgb(yuv: np.ndarray, bits: int, colorspace: int, full_range: bool) -> np.ndarray:
    """(h, w, 3) integer Y'CbCr at `bits` per sample -> float32 non-linear R'G'B' (unclipped)."""
    kr, kb = _MATRIX.get(int(colorspace), _MATRIX[6])
    x = yuv.astype(np.float32)
    scale = float(1 << (bits - 8))
    if full_range:
        top = float((1 << bits) - 1)
        y, cb, cr = x[..., 0] / top, (x[..., 1] - 128 * scale) / top, (x[..., 2] - 128 * scale) / top
    else:
        y = (x[..., 0] - 16 * scale) / (219 * scale)
        cb, cr = (x[..., 1] - 128 * scale) / (224 * scale), (x[..., 2] - 128 * scale) / (224 * scale)
    kg = 1 - kr - kb
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / kg
    return np.stack([r, g, b], axis=-1)


def hlg_to_nits(rgb: np.ndarray) -> np.ndarray:
    """HLG R'G'B' -> display light (cd/m²) on the 1000 cd/m² reference display (BT.2100)."""
    e = np.clip(rgb, 0, 1)
    low = e * e / 3
    high = (np.exp((e - _HLG_C) / _HLG_A) + _HLG_B) / 12
    scene = np.where(e <= 0.5, low, high)
    ys = scene @ _BT2020_LUMA
    return HLG_PEAK * np.power(np.maximum(ys, 1e-12), HLG_GAMMA - 1)[..., None] * scene


def pq_to_nits(rgb: np.ndarray) -> np.ndarray:
    """PQ R'G'B' -> display light (cd/m²), SMPTE ST 2084 EOTF."""
    p = np.power(np.clip(rgb, 0, 1), 1 / _PQ_M2)
    return 10000 * np.power(np.maximum(p - _PQ_C1, 0) / (_PQ_C2 - _PQ_C3 * p), 1 / _PQ_M1)


def roll_off(m: np.ndarray) -> np.ndarray:
    """Step 5: identity below KNEE, then a smooth approach to 1."""
    span = 1 - KNEE
    return np.where(m <= KNEE, m, KNEE + span * (1 - np.exp(-(m - KNEE) / span)))


def hdr_to_sdr(rgb: np.ndarray, transfer: int, primaries: int) -> np.ndarray:
    """Non-linear HDR R'G'B' (h, w, 3) -> SDR BT.709 R'G'B' in [0, 1], the operator above."""
    nits = hlg_to_nits(rgb) if transfer == TRC_HLG else pq_to_nits(rgb)
    light = nits / REFERENCE_WHITE
    if primaries == PRIMARIES_BT2020:
        light = light @ BT2020_TO_BT709.T
    light = np.maximum(light, 0)
    m = light.max(axis=-1, keepdims=True)
    light = light * np.where(m > KNEE, roll_off(m) / np.maximum(m, 1e-12), 1.0)
    return np.power(np.clip(light, 0, 1), 1 / SDR_GAMMA).astype(np.float32)


def over_background(rgba: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 4) straight alpha -> float32 (h, w, 3) in [0, 1] over ALPHA_BACKGROUND."""
    x = rgba.astype(np.float32) / 255
    alpha = x[..., 3:4]
    return x[..., :3] * alpha + np.asarray(ALPHA_BACKGROUND, np.float32) * (1 - alpha)
