"""The codes and scales inside llama.cpp's quantized blocks, for ``muse-quant diagnose``.

:func:`block_levels` reads the bytes :func:`harness_ext.quantizers.gguf_kquants.quantize` wrote
(llama.cpp's layout) back into, per quantization group, the integer level of every element, the
group's scale and its offset, such that the dequantized value is ``scale * level + offset``
exactly as ggml's (and gguf-py's) ``dequantize_row_*`` compute it in float32. The group is the
unit that shares one scale:

========  =====  ==============================  ===============  ==========
type      group  scale                           offset           levels
========  =====  ==============================  ===============  ==========
Q4_0      32     d (fp16)                        --               -8 .. 7
Q5_0      32     d                               --               -16 .. 15
Q8_0      32     d                               --               -127 .. 127
Q4_1      32     d                               m (fp16 min)     0 .. 15
Q5_1      32     d                               m                0 .. 31
Q2_K      16     d * sc (4-bit sc)               -dmin * m        0 .. 3
Q3_K      16     d * (sc - 32) (6-bit sc)        --               -4 .. 3
Q4_K      32     d * sc (6-bit sc)               -dmin * m        0 .. 15
Q5_K      32     d * sc                          -dmin * m        0 .. 31
Q6_K      16     d * sc (int8 sc)                --               -32 .. 31
F16       row    1                               --               the fp16 value's rank
========  =====  ==============================  ===============  ==========

(d, dmin: the block's / super-block's fp16 scales; sc, m: the sub-block's quantized scale and
min.) The layouts follow gguf-py's ``dequantize_blocks``.
"""

from __future__ import annotations

import numpy as np

from .gguf_kquants import BLOCK_SIZES, QK_K

F32 = np.float32
#: type -> (elements per group, lowest level, highest level, has an offset)
GROUPS = {"Q4_0": (32, -8, 7, False), "Q5_0": (32, -16, 15, False),
          "Q8_0": (32, -127, 127, False), "Q4_1": (32, 0, 15, True), "Q5_1": (32, 0, 31, True),
          "Q2_K": (16, 0, 3, True), "Q3_K": (16, -4, 3, False), "Q4_K": (32, 0, 15, True),
          "Q5_K": (32, 0, 31, True), "Q6_K": (16, -32, 31, False)}


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(F32)


def _nibbles(qs: np.ndarray, n: int, width: int) -> np.ndarray:
    """Low then high nibbles of ``width``-byte runs -> (n, -1) levels 0..15."""
    q = qs.reshape(n, -1, 1, width) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n, -1)


def _high_bits(qh: np.ndarray, n: int, count: int) -> np.ndarray:
    """Bit i of a little-endian uint32 per block (Q5_0 / Q5_1) -> (n, 32)."""
    bits = np.ascontiguousarray(qh).view(np.uint32).reshape(n, 1) >> np.arange(
        count, dtype=np.uint32).reshape(1, count)
    return (bits & 1).astype(np.uint8)


def _k4_scale_min(scales: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The 6-bit sub-block scales and mins of Q4_K / Q5_K (gguf-py's ``get_scale_min``)."""
    s = scales.reshape(n, 3, 4)
    d, m, m_d = s[:, 0], s[:, 1], s[:, 2]
    sc = np.concatenate([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], axis=-1)
    mn = np.concatenate([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], axis=-1)
    return sc.astype(F32), mn.astype(F32)


def _legacy(blocks: np.ndarray, type_name: str):
    n = blocks.shape[0]
    d = _f16(blocks[:, :2])[:, 0]
    if type_name == "Q8_0":
        return blocks[:, 2:].copy().view(np.int8).astype(np.int64), d, None
    with_min = type_name in ("Q4_1", "Q5_1")
    m = _f16(blocks[:, 2:4])[:, 0] if with_min else None
    rest = blocks[:, 4 if with_min else 2:]
    if type_name in ("Q4_0", "Q4_1"):
        q = _nibbles(rest, n, 16).astype(np.int64)
        return (q if with_min else q - 8), d, m
    q = (_nibbles(rest[:, 4:], n, 16) | (_high_bits(rest[:, :4], n, 32) << 4)).astype(np.int64)
    return (q if with_min else q - 16), d, m


def _k_quant(blocks: np.ndarray, type_name: str):
    n = blocks.shape[0]
    if type_name == "Q2_K":
        scales, qs = blocks[:, :16], blocks[:, 16:80]
        d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
        q = (qs.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
        return (q.reshape(n * 16, 16).astype(np.int64), (d * (scales & 0xF).astype(F32)).ravel(),
                -(dmin * (scales >> 4).astype(F32)).ravel())
    if type_name == "Q3_K":
        hmask, qs, scales = blocks[:, :32], blocks[:, 32:96], blocks[:, 96:108]
        d = _f16(blocks[:, 108:110])
        low = (scales[:, :8].reshape(n, 1, 8) >> np.array([0, 4], np.uint8).reshape(1, 2, 1))
        high = (scales[:, 8:].reshape(n, 1, 4) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 4, 1))
        sc = (low.reshape(n, 16) & 0x0F) | ((high.reshape(n, 16) & 0x03) << 4)
        sc = (sc.astype(np.int8) - np.int8(32)).astype(F32)
        ql = (qs.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
        qh = (hmask.reshape(n, -1, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1
        q = ql.reshape(n, 16, 16).astype(np.int64) - 4 * (qh.reshape(n, 16, 16) ^ 1)
        return q.reshape(n * 16, 16), (d * sc).ravel(), None
    if type_name in ("Q4_K", "Q5_K"):
        d, dmin = _f16(blocks[:, 0:2]), _f16(blocks[:, 2:4])
        sc, mn = _k4_scale_min(blocks[:, 4:16], n)
        if type_name == "Q4_K":
            q = _nibbles(blocks[:, 16:], n, 32)
        else:
            qh = (blocks[:, 16:48].reshape(n, -1, 1, 32)
                  >> np.arange(8, dtype=np.uint8).reshape(1, 1, 8, 1)) & 1
            q = _nibbles(blocks[:, 48:], n, 32) | (qh.reshape(n, -1) << 4)
        return q.reshape(n * 8, 32).astype(np.int64), (d * sc).ravel(), -(dmin * mn).ravel()
    # Q6_K
    ql, qh, scales = blocks[:, :128], blocks[:, 128:192], blocks[:, 192:208]
    d = _f16(blocks[:, 208:210])
    low = (ql.reshape(n, -1, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    high = (qh.reshape(n, -1, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3
    q = (low.reshape(n, -1, 32) | (high.reshape(n, -1, 32) << 4)).astype(np.int64) - 32
    return q.reshape(n * 16, 16), (d * scales.view(np.int8).astype(F32)).ravel(), None


def block_levels(qdata: np.ndarray, type_name: str):
    """``(levels, scale, offset)`` of quantized rows ``qdata`` (uint8, rows x bytes per row).

    ``levels``: int64 (groups, group size), in the weight's element order; ``scale`` and
    ``offset``: float32 (groups,), ``offset`` None for the types without a min. The dequantized
    value of an element is ``scale * level + offset`` (``scale * level``), bit for bit.
    """
    if type_name not in GROUPS:
        raise ValueError(f"no code layout for {type_name}")
    size = BLOCK_SIZES[type_name][1]
    blocks = np.ascontiguousarray(qdata).reshape(-1, size)
    levels, scale, offset = (_legacy if BLOCK_SIZES[type_name][0] != QK_K else _k_quant)(
        blocks, type_name)
    return levels, scale, offset


def f16_ranks(values: np.ndarray) -> np.ndarray:
    """The rank of each fp16 value among the fp16 values, signed (+0 and -0 are 0): the codes of
    llama.cpp's F16 fallback."""
    bits = np.asarray(values, dtype=np.float16).view(np.uint16).astype(np.int64)
    magnitude = bits & 0x7FFF
    return np.where(bits & 0x8000, -magnitude, magnitude)
