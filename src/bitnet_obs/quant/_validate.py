"""Input checks shared by the quantization core.

Every public function of :mod:`bitnet_obs.quant` funnels its arguments through here so a bad input
fails early with one exception type, :class:`QuantInputError`, whose message names what was wrong
and what is accepted.  Torch tensors are taken through ``__array__`` or DLPack without importing
torch.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "FORMATS",
    "LAYOUTS",
    "Format",
    "Layout",
    "QuantInputError",
    "as_array",
    "check_format",
    "check_layout",
    "check_same_shape",
    "check_tiling",
    "check_scale",
    "codes_input",
    "finite_or_raise",
    "float_input",
    "int8_input",
    "shape_input",
    "tl1_k",
    "tl2_split",
]

Format = Literal["i2_s", "tl1", "tl2"]
Layout = Literal["x86", "arm"]

FORMATS: tuple[Format, ...] = ("i2_s", "tl1", "tl2")
LAYOUTS: tuple[Layout, ...] = ("x86", "arm")

_F32_MAX = float(np.finfo(np.float32).max)
_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_ACCEPTED_ARRAYS = "a numpy array or an object with __array__ or __dlpack__ (e.g. torch.Tensor)"


class QuantInputError(ValueError):
    """An argument the quantization core cannot use; the message says what is accepted.

    A subclass of :class:`ValueError`, so callers that already catch ``ValueError`` keep working.
    """


def _is_bfloat16(x: object) -> bool:
    return str(getattr(x, "dtype", "")).endswith("bfloat16")


def as_array(x: object, name: str) -> npt.NDArray[Any]:
    """Return *x* as an ndarray without copying when the source allows it.

    bfloat16 (a torch tensor, or a numpy array of ml_dtypes' bfloat16) becomes float32, which
    holds every bfloat16 exactly: bitnet.cpp's converter does the same before quantizing.
    """
    if isinstance(x, np.ndarray):
        return x.astype(np.float32) if _is_bfloat16(x) else x
    if _is_bfloat16(x) and callable(getattr(x, "float", None)):
        x = x.float()  # type: ignore[attr-defined]  # torch: numpy has no bfloat16
    if hasattr(x, "__array__") or isinstance(x, list | tuple):
        try:
            return np.asarray(x)
        except (TypeError, ValueError, RuntimeError) as exc:
            if not hasattr(x, "__dlpack__"):
                raise QuantInputError(
                    f"{name}: could not convert {type(x).__name__} to an array ({exc}); "
                    f"accepted: {_ACCEPTED_ARRAYS}"
                ) from exc
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (TypeError, ValueError, RuntimeError, BufferError) as exc:
            raise QuantInputError(
                f"{name}: could not read {type(x).__name__} through DLPack ({exc}); accepted: "
                "CPU tensors of dtype float16/float32/float64 or int8 (try .detach().cpu())"
            ) from exc
    raise QuantInputError(f"{name}: got {type(x).__name__}; accepted: {_ACCEPTED_ARRAYS}")


def _shape_text(a: npt.NDArray[Any]) -> str:
    return f"{a.ndim}-D shape {tuple(a.shape)}"


def _check_rank_and_size(
    a: npt.NDArray[Any], name: str, ndims: tuple[int, ...] | None, what: str
) -> None:
    if ndims is not None and a.ndim not in ndims:
        accepted = " ".join([" or ".join(f"{n}-D" for n in ndims), what]).rstrip()
        raise QuantInputError(f"{name}: got {_shape_text(a)}; accepted: {accepted}")
    if a.size == 0:
        raise QuantInputError(
            f"{name} is empty (shape {tuple(a.shape)}); accepted: at least one element"
        )


def finite_or_raise(a: npt.NDArray[Any], name: str) -> None:
    """Raise if *a* holds NaN or Inf, saying how many and where the first one sits."""
    bad = ~np.isfinite(a)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return
    n_nan = int(np.count_nonzero(np.isnan(a)))
    first = np.unravel_index(int(np.argmax(bad)), a.shape)
    where = tuple(int(i) for i in first)
    raise QuantInputError(
        f"{name} contains {n_nan} NaN and {n_bad - n_nan} Inf values (first at index {where}); "
        "accepted: finite values only"
    )


def float_input(
    x: object,
    name: str,
    ndims: tuple[int, ...] | None = (1, 2),
    what: str = "",
    *,
    check_finite: bool = True,
) -> npt.NDArray[np.floating[Any]]:
    """Coerce and check a float tensor; ``check_finite=False`` lets callers test finiteness
    more cheaply from sums they compute anyway."""
    a = as_array(x, name)
    if a.dtype not in _FLOATS:
        raise QuantInputError(f"{name} has dtype {a.dtype}; accepted: float16/float32/float64")
    _check_rank_and_size(a, name, ndims, what)
    if check_finite:
        finite_or_raise(a, name)
    return a


def int8_input(x: object, name: str, ndims: tuple[int, ...] = (1, 2)) -> npt.NDArray[np.int8]:
    """Check int8 activations as produced by ``quantize_activations``."""
    a = as_array(x, name)
    if a.dtype != np.int8:
        raise QuantInputError(
            f"{name} has dtype {a.dtype}; accepted: int8 (from quantize_activations)"
        )
    _check_rank_and_size(a, name, ndims, "(rows, K) int8 activations")
    return a


def codes_input(x: object, name: str, ndims: tuple[int, ...] = (2,)) -> npt.NDArray[np.int8]:
    """Check ternary codes and return them as int8."""
    a = as_array(x, name)
    if a.dtype.kind not in "iu":
        raise QuantInputError(
            f"{name} has dtype {a.dtype}; accepted: integer dtypes (int8 preferred) holding -1/0/+1"
        )
    _check_rank_and_size(a, name, ndims, "(M, K) ternary codes" if ndims == (2,) else "codes")
    lo, hi = int(a.min()), int(a.max())
    if lo < -1 or hi > 1:
        bad = (a < -1) | (a > 1)
        first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape))
        raise QuantInputError(
            f"{name} holds {int(np.count_nonzero(bad))} values outside {{-1, 0, 1}} "
            f"(first {int(a[first])} at index {first}); accepted: ternary codes -1/0/+1"
        )
    return a.astype(np.int8, copy=False)


def check_format(fmt: object) -> Format:
    """Normalise a format name (case-insensitive)."""
    key = fmt.lower() if isinstance(fmt, str) else fmt
    for known in FORMATS:
        if key == known:
            return known
    raise QuantInputError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")


def check_layout(layout: object) -> Layout:
    for known in LAYOUTS:
        if layout == known:
            return known
    raise QuantInputError(f"unknown I2_S layout {layout!r}; accepted: {', '.join(LAYOUTS)}")


def check_same_shape(a: npt.NDArray[Any], b: npt.NDArray[Any], na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise QuantInputError(
            f"{na} has shape {tuple(a.shape)} but {nb} has shape {tuple(b.shape)}; "
            "accepted: identical shapes"
        )


def check_scale(scale: object, name: str = "scale", *, allow_zero: bool = False) -> np.float32:
    """A per-tensor weight scale: finite and positive (or 0.0 where *allow_zero*: what
    llama-quantize stores for an all-zero tensor), stored as float32 like bitnet.cpp."""
    accepted = "a finite float >= 0" if allow_zero else "a finite float > 0"
    try:
        value = float(scale)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise QuantInputError(f"{name}: got {type(scale).__name__}; accepted: {accepted}") from exc
    if not (value >= 0 if allow_zero else value > 0) or not value <= _F32_MAX:
        raise QuantInputError(f"{name} is {value!r}; accepted: {accepted} (float32 range)")
    s: np.float32 = np.float32(value)
    return s


def shape_input(shape: object, name: str = "shape") -> tuple[int, ...]:
    """A tensor shape: a non-empty tuple of positive ints."""
    try:
        dims = tuple(int(d) for d in shape)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise QuantInputError(
            f"{name}: got {shape!r}; accepted: a tuple of positive ints such as (M, K)"
        ) from exc
    if not dims or any(d <= 0 for d in dims):
        raise QuantInputError(
            f"{name}: got {dims}; accepted: a non-empty tuple of positive ints such as (M, K)"
        )
    return dims


def tl1_k(k: int) -> None:
    """TL1 groups weights in pairs along K."""
    if k % 2:
        raise QuantInputError(
            f"TL1 cannot tile K={k}: weights are paired along K; accepted: an even K"
        )


def check_tiling(fmt: Format, k: int, bk: object) -> None:
    """Raise if a (M, K) weight cannot be laid out in *fmt* (I2_S takes any K)."""
    if fmt == "tl1":
        tl1_k(k)
    elif fmt == "tl2":
        tl2_split(k, bk)


def tl2_split(k: int, bk: object) -> tuple[int, int]:
    """Split K into the triple part (a multiple of *bk*) and the TL1 pair remainder."""
    if isinstance(bk, bool) or not isinstance(bk, int | np.integer) or bk <= 0 or bk % 3:
        raise QuantInputError(f"TL2 bk={bk!r}; accepted: a positive multiple of 3 (default 96)")
    three_k = (k // int(bk)) * int(bk)
    two_k = k - three_k
    if two_k % 2:
        raise QuantInputError(
            f"TL2 cannot tile K={k} with bk={bk}: the remainder two_k={two_k} after "
            f"three_k={three_k} must be even for TL1 pairs; accepted: K with (K % bk) even"
        )
    return three_k, two_k
