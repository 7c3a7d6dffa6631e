"""llama.cpp's GGUF weight formats in numpy: quantized bytes identical to ``ggml_quantize_chunk``.

* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 come from gguf-py (``gguf.quants.quantize``), which reproduces
  llama.cpp's reference quantizers byte for byte.
* gguf-py has no K-quant quantizer, so Q2_K .. Q6_K are re-implemented here from the algorithm of
  llama.cpp's reference quantizers *without* an importance matrix (what ``llama-quantize`` runs
  when no imatrix is given): per super-block of 256 values, sub-block scales (and mins) are found
  by a small search (``make_qkx2_quants`` for Q2_K/Q4_K/Q5_K, ``make_q3_quants`` for Q3_K,
  ``make_qx_quants`` for Q6_K), quantized to 4/6/8 bits against one fp16 super-scale, and the
  values are re-quantized with the rounded scales.
* F16 is the fallback llama.cpp uses when a row length is not a multiple of 32.

Bit-exactness: every operation is float32 in the order the C code evaluates it (ggml-base is
compiled without FMA contraction), sums are sequential, ``nearest_int`` is emulated with its
``+ 1.5 * 2^23`` bit trick, fp16 conversion rounds to nearest even. Sub-blocks are processed in
parallel (one numpy array element per sub-block, a Python loop over the 16 or 32 values).
Dequantization is gguf-py's (``gguf.quants.dequantize``), which computes what ggml's
``dequantize_row_*`` computes. ``tests/test_gguf.py`` checks the bytes and the dequantized values
against fixtures made by llama.cpp itself (``tests/data/gguf/make_golden.py``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

QK_K = 256
F32 = np.float32
_EPS = F32(1e-15)  # GROUP_MAX_EPS
_CHUNK_BLOCKS = 256  # super-blocks per step: the temporaries stay in cache (fastest measured)

# type name -> (block size, bytes per block)
BLOCK_SIZES = {"F16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22),
               "Q5_1": (32, 24), "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110),
               "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
LEGACY_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


# --- scalar helpers, elementwise on arrays -------------------------------------------------

def nearest_int(f: np.ndarray) -> np.ndarray:
    """llama.cpp's ``nearest_int``: add 1.5 * 2^23 in float32 and read the mantissa bits."""
    bits = (np.asarray(f, dtype=F32) + F32(12582912.0)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000


def fp16_bits(f: np.ndarray) -> np.ndarray:
    """float32 -> fp16 bits, rounding to nearest even (NaN -> 0x7E00 as ggml)."""
    f = np.asarray(f, dtype=F32)
    with np.errstate(over="ignore", invalid="ignore"):
        bits = f.astype(np.float16).view(np.uint16)
    sign = (f.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
    return np.where(np.isnan(f), sign | np.uint16(0x7E00), bits)


def fp16_value(bits: np.ndarray) -> np.ndarray:
    return bits.view(np.float16).astype(F32)


def _seqsum(terms: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Sum over axis 0 one term at a time, as a C loop ``s = 0; s += t[i]`` does."""
    total = np.zeros(terms.shape[1:], F32) if start is None else start.copy()
    for term in terms:
        total += term
    return total


def _first_absmax(x: np.ndarray, axis: int) -> np.ndarray:
    """The value with the largest |x| along ``axis``, the first one on ties (C's ``>`` scan)."""
    idx = np.expand_dims(np.abs(x).argmax(axis=axis), axis)
    return np.take_along_axis(x, idx, axis=axis).squeeze(axis)


def _u8(values: np.ndarray) -> np.ndarray:
    """C's conversion of an int to uint8_t (wraps)."""
    return (values & 0xFF).astype(np.uint8)


# --- the per-sub-block searches; x has the values on axis 0 and one sub-block per column ---

def make_qx_quants(x: np.ndarray, nmax: int):
    """``make_qx_quants`` with rmse_type 1 (weights x^2) and no quant weights -> (scale, L)."""
    amax_val = _first_absmax(x, 0)
    zero = np.abs(amax_val) < _EPS
    w = x * x

    def attempt(iscale):
        q = np.clip(nearest_int(iscale * x), -nmax, nmax - 1)
        qf = q.astype(F32)
        return q, _seqsum(w * x * qf), _seqsum(w * qf * qf)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q, sumlx, suml2 = attempt(F32(-nmax) / amax_val)
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            iscale = -(F32(nmax) + F32(0.1) * F32(step)) / amax_val
            q_try, lx, l2 = attempt(iscale)
            better = (l2 > 0) & (lx * lx > best * l2)
            q = np.where(better, q_try, q)
            scale = np.where(better, lx / l2, scale)
            best = np.where(better, scale * lx, best)
    levels = np.where(zero, 0, q + nmax)
    return np.where(zero, F32(0), scale), levels


def make_q3_quants(x: np.ndarray, nmax: int):
    """``make_q3_quants`` with do_rmse: RTN start, then up to 5 passes of coordinate descent."""
    amax_val = _first_absmax(x, 0)
    zero = np.abs(amax_val) < _EPS
    w = x * x
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.clip(nearest_int((F32(-nmax) / amax_val) * x), -nmax, nmax - 1)
        qf = q.astype(F32)
        sumlx, suml2 = _seqsum(w * x * qf), _seqsum(w * qf * qf)
        # A pass that changes nothing leaves the state as it was, so later passes change
        # nothing either: the C loop's early exit needs no mask here.
        for _ in range(5):
            for i in range(x.shape[0]):
                wi, xi, li = w[i], x[i], q[i].astype(F32)
                slx = sumlx - wi * xi * li
                sl2 = suml2 - wi * li * li
                new = np.clip(nearest_int(xi * sl2 / slx), -nmax, nmax - 1)
                nf = new.astype(F32)
                slx_new = slx + wi * xi * nf
                sl2_new = sl2 + wi * nf * nf
                take = ((slx > 0) & (new != q[i]) & (sl2_new > 0)
                        & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
                q[i] = np.where(take, new, q[i])
                sumlx = np.where(take, slx_new, sumlx)
                suml2 = np.where(take, sl2_new, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    return np.where(zero, F32(0), scale), np.where(zero, 0, q + nmax)


def _weighted_error(scale, levels, mn, x, w, use_mad):
    diff = scale * levels.astype(F32) + mn - x
    return _seqsum(w * (np.abs(diff) if use_mad else diff * diff))


def make_qkx2_quants(x, w, nmax, rmin, rdelta, nstep, use_mad):
    """``make_qkx2_quants``: scale and min of ``scale * L - min`` by a weighted grid search.

    Returns ``(scale, the_min, L)``; the search's min moves with each accepted candidate, and
    the next candidate's grid is computed from it, as in C.
    """
    mn, mx = x.min(axis=0), x.max(axis=0)
    sum_w = _seqsum(w[1:], start=w[0])
    sum_x = _seqsum(w[1:] * x[1:], start=w[0] * x[0])
    mn = np.where(mn > 0, F32(0), mn)
    flat = mx == mn
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(nmax) / (mx - mn)
        scale = F32(1) / iscale
        levels = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
        best = _weighted_error(scale, levels, mn, x, w, use_mad)
        for step in range(nstep + 1):
            iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (mx - mn)
            aux = np.clip(nearest_int(iscale * (x - mn)), 0, nmax)
            lf = aux.astype(F32)
            wl = w * lf
            sum_l, sum_l2, sum_xl = _seqsum(wl), _seqsum(wl * lf), _seqsum(wl * x)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            positive = this_min > 0
            this_min = np.where(positive, F32(0), this_min)
            this_scale = np.where(positive, sum_xl / sum_l2, this_scale)
            err = _weighted_error(this_scale, aux, this_min, x, w, use_mad)
            better = ~flat & (det > 0) & (err < best)
            levels = np.where(better, aux, levels)
            best = np.where(better, err, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    return np.where(flat, F32(0), scale), -mn, np.where(flat, 0, levels)


# --- super-block quantizers: blocks (n, 256) float32 -> bytes (n, type size) ---------------

def _columns(blocks, sub):
    """(n, 256) -> (sub, n * 256 / sub): one sub-block per column."""
    return np.ascontiguousarray(blocks.reshape(-1, sub).T)


def _rows(columns, n):
    return np.ascontiguousarray(columns.T).reshape(n, QK_K)


def _requantize(blocks, d, dm, levels, sub, lo, hi):
    """Re-quantize with the rounded scales where d != 0: L = clamp(nearest_int((x + dm) / d))
    - lo; sub-blocks with d == 0 keep the search's ``levels``."""
    n = blocks.shape[0]
    x = blocks.reshape(n, -1, sub)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.clip(nearest_int((x + dm[..., None]) / d[..., None]), lo, hi) - lo
    return np.where((d != 0)[..., None], q, levels.reshape(n, -1, sub)).reshape(n, QK_K)


def _pack_2bit(levels):
    """Four 2-bit values per byte: byte l of each 128-half holds L[l], L[l+32], L[l+64], L[l+96]."""
    h = levels.reshape(-1, 2, 4, 32).astype(np.uint8)
    return (h[:, :, 0] | (h[:, :, 1] << 2) | (h[:, :, 2] << 4) | (h[:, :, 3] << 6)).reshape(-1, 64)


def _pack_k4_scales(ls, lm):
    """Q4_K/Q5_K's 12 bytes of 6-bit scales and mins (8 each)."""
    out = np.zeros((ls.shape[0], 12), np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    return out


def _fp16_bytes(bits):
    """fp16 bits (n,) -> their two little-endian bytes (n, 2)."""
    return np.ascontiguousarray(bits, dtype="<u2").reshape(-1, 1).view(np.uint8)


def quantize_q2_k(blocks):
    n = blocks.shape[0]
    x = _columns(blocks, 16)
    scales, mins, levels = make_qkx2_quants(x, np.abs(x), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(n, 16), mins.reshape(n, 16)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ls = np.where(max_scale[:, None] > 0,
                      nearest_int((F32(15) / max_scale)[:, None] * scales), 0) & 0xFF
        lm = np.where(max_min[:, None] > 0,
                      nearest_int((F32(15) / max_min)[:, None] * mins), 0)
    sc = _u8(ls | (lm << 4))
    d_bits = fp16_bits(np.where(max_scale > 0, max_scale / F32(15), F32(0)))
    m_bits = fp16_bits(np.where(max_min > 0, max_min / F32(15), F32(0)))
    d = fp16_value(d_bits)[:, None] * (sc & 0xF).astype(F32)
    dm = fp16_value(m_bits)[:, None] * (sc >> 4).astype(F32)
    q = _requantize(blocks, d, dm, _rows(levels, n), 16, 0, 3)
    return np.concatenate([sc, _pack_2bit(q), _fp16_bytes(d_bits),
                           _fp16_bytes(m_bits)], axis=1)


def quantize_q3_k(blocks):
    n = blocks.shape[0]
    scales, levels = make_q3_quants(_columns(blocks, 16), 4)
    scales = scales.reshape(n, 16)
    max_scale = _first_absmax(scales, 1)
    nonzero = max_scale != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = F32(-32) / max_scale
        l6 = nearest_int(iscale[:, None] * scales)
    l6 = (l6 & 0xFF).astype(np.uint8).view(np.int8).astype(np.int32)  # int8_t l = nearest_int()
    l6 = np.where(nonzero[:, None], np.clip(l6, -32, 31) + 32, 0)
    sc = np.zeros((n, 12), np.uint8)
    sc[:, :8] = (l6[:, :8] & 0xF) | ((l6[:, 8:] & 0xF) << 4)
    high = (l6 >> 4).reshape(n, 4, 4)  # [j // 4, j % 4]
    sc[:, 8:] = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    with np.errstate(divide="ignore"):
        d_bits = fp16_bits(np.where(nonzero, F32(1) / iscale, F32(0)))
    d = fp16_value(d_bits)[:, None] * (l6 - 32).astype(F32)
    q = _requantize(blocks, d, np.zeros_like(d), _rows(levels, n), 16, -4, 3)
    high_bit = q > 3
    q = np.where(high_bit, q - 4, q)
    bits = high_bit.reshape(n, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[:, None]
    hmask = np.bitwise_or.reduce(bits, axis=1)
    return np.concatenate([hmask, _pack_2bit(q), sc, _fp16_bytes(d_bits)], axis=1)


def _quantize_k_with_min(blocks, nmax, rmin, nstep):
    """Shared by Q4_K and Q5_K: 8 sub-blocks of 32 with a scale and a min each."""
    n = blocks.shape[0]
    x = _columns(blocks, 32)
    av_x = np.sqrt(_seqsum(x * x) / F32(32))
    scales, mins, levels = make_qkx2_quants(x, av_x + np.abs(x), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale = np.maximum(scales.max(axis=1), F32(0))
    max_min = np.maximum(mins.max(axis=1), F32(0))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # denormal max: inf
        inv_scale = np.where(max_scale > 0, F32(63) / max_scale, F32(0))
        inv_min = np.where(max_min > 0, F32(63) / max_min, F32(0))
        ls = np.minimum(_u8(nearest_int(inv_scale[:, None] * scales)), 63)
        lm = np.minimum(_u8(nearest_int(inv_min[:, None] * mins)), 63)
    d_bits, m_bits = fp16_bits(max_scale / F32(63)), fp16_bits(max_min / F32(63))
    d = fp16_value(d_bits)[:, None] * ls.astype(F32)
    dm = fp16_value(m_bits)[:, None] * lm.astype(F32)
    q = _requantize(blocks, d, dm, _rows(levels, n), 32, 0, nmax)
    head = [_fp16_bytes(d_bits), _fp16_bytes(m_bits), _pack_k4_scales(ls, lm)]
    return head, q.reshape(n, 4, 2, 32).astype(np.uint8)  # [64-chunk, low/high half, l]


def quantize_q4_k(blocks):
    head, q = _quantize_k_with_min(blocks, 15, -1.0, 20)
    return np.concatenate([*head, (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)], axis=1)


def quantize_q5_k(blocks):
    head, q = _quantize_k_with_min(blocks, 31, -0.5, 15)
    # the 5th bit of L[64c + l] goes to bit 2c of qh[l], that of L[64c + 32 + l] to bit 2c + 1
    shifts = np.arange(8, dtype=np.uint8).reshape(4, 2, 1)
    qh = np.bitwise_or.reduce((q >> 4) << shifts, axis=(1, 2))
    low = q & 0xF
    return np.concatenate([*head, qh, (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)],
                          axis=1)


def quantize_q6_k(blocks):
    n = blocks.shape[0]
    scales, levels = make_qx_quants(_columns(blocks, 16), 32)
    scales = scales.reshape(n, 16)
    max_scale = _first_absmax(scales, 1)
    zero = np.abs(max_scale) < _EPS
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iscale = F32(-128) / max_scale
        d_bits = fp16_bits(F32(1) / iscale)
        sc = np.minimum(127, nearest_int(iscale[:, None] * scales))
    sc = (sc & 0xFF).astype(np.uint8).view(np.int8)
    d = fp16_value(d_bits)[:, None] * sc.astype(F32)
    q = _requantize(blocks, d, np.zeros_like(d), _rows(levels, n), 16, -32, 31)
    q = q.reshape(n, 2, 4, 32).astype(np.uint8)
    low, high = q & 0xF, q >> 4
    ql = np.concatenate([low[:, :, 0] | (low[:, :, 2] << 4),
                         low[:, :, 1] | (low[:, :, 3] << 4)], axis=2).reshape(n, 128)
    qh = (high[:, :, 0] | (high[:, :, 1] << 2) | (high[:, :, 2] << 4)
          | (high[:, :, 3] << 6)).reshape(n, 64)
    out = np.concatenate([ql, qh, sc.view(np.uint8), _fp16_bytes(d_bits)], axis=1)
    out[zero] = 0
    return out


_K_QUANTIZERS = {"Q2_K": quantize_q2_k, "Q3_K": quantize_q3_k, "Q4_K": quantize_q4_k,
                 "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


# --- whole tensors -------------------------------------------------------------------------

def _qtype(type_name: str):
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[type_name]


def _c_signed_zeros(blocks: np.ndarray, out: np.ndarray, type_name: str) -> None:
    """Give gguf-py's legacy blocks the signs of zero that llama.cpp's scans produce.

    gguf-py takes the block's extreme value with numpy (argmax / min / max), llama.cpp with a
    ``<`` / ``>`` scan from a +0 or +-FLT_MAX start. They differ only in the sign of a zero
    scale or min (an all-zero block, a block whose minimum is 0), which changes a byte but no
    dequantized value. Fixed here in place so that the bytes match too.
    """
    if type_name in ("Q4_0", "Q5_0"):  # amax stays 0: max = +0, d = +0 / -8 = -0
        out[(blocks == 0).all(axis=1), :2] = (0x00, 0x80)
    elif type_name in ("Q4_1", "Q5_1"):
        lo, hi = blocks.min(axis=1), blocks.max(axis=1)
        out[lo == hi, :2] = 0  # max and min are the same element: d = +0
        zero_min = np.nonzero(lo == 0)[0]
        first = (blocks[zero_min] == 0).argmax(axis=1)  # the scan keeps the first zero
        negative = np.signbit(blocks[zero_min, first])
        out[zero_min, 2] = 0
        out[zero_min, 3] = np.where(negative, 0x80, 0x00)


def quantize(data: np.ndarray, type_name: str) -> np.ndarray:
    """float32 (rows, cols) -> uint8 (rows, bytes per row), as ``ggml_quantize_chunk``."""
    data = np.ascontiguousarray(data, dtype=F32)
    block, size = BLOCK_SIZES[type_name]
    rows, cols = data.shape
    if cols % block:
        raise ValueError(f"{type_name} needs rows that are a multiple of {block}, got {cols}")
    if type_name == "F16":
        return fp16_bits(data).view(np.uint8).reshape(rows, cols * 2)
    if type_name in LEGACY_TYPES:
        from gguf import quants

        with np.errstate(all="ignore"):  # huge or denormal blocks overflow as in C
            out = quants.quantize(data, _qtype(type_name))
        _c_signed_zeros(data.reshape(-1, block), out.reshape(-1, size), type_name)
        return out
    blocks = data.reshape(-1, QK_K)
    out = np.empty((blocks.shape[0], size), np.uint8)

    def run(start):
        out[start:start + _CHUNK_BLOCKS] = _K_QUANTIZERS[type_name](
            blocks[start:start + _CHUNK_BLOCKS])

    starts = range(0, blocks.shape[0], _CHUNK_BLOCKS)
    workers = min(len(starts), os.cpu_count() or 1, 8)
    if workers > 1:  # numpy releases the GIL in the array operations
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    else:
        for start in starts:
            run(start)
    return out.reshape(rows, cols // block * size)


def dequantize(qdata: np.ndarray, type_name: str) -> np.ndarray:
    """uint8 (rows, bytes per row) -> float32 (rows, cols), gguf-py's dequantizer."""
    if type_name == "F16":
        return qdata.view(np.float16).astype(F32)
    from gguf import quants

    return quants.dequantize(qdata, _qtype(type_name))


def fake_quantize(data: np.ndarray, type_name: str) -> np.ndarray:
    """Quantize then dequantize (float32 in, float32 out)."""
    return dequantize(quantize(data, type_name), type_name)
