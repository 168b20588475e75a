"""Chapter 05 (quantization): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, run_cases


def check_quantized_bytes(fn: Callable) -> CheckResult:
    """05 — ``fn(out_features, in_features, bits, group_size, symmetric, bias)``: bytes of a QuantLinear.

    Reference: the ``weight_bytes()`` of a real :class:`course_lib.quant.QuantLinear` (packed
    codes, fp16 scales, uint8 zero-points when asymmetric, fp32 bias). ``group_size`` None =
    one group per output row.
    """
    from course_lib.quant import QuantLinear

    cases = []
    for out_f, in_f, bits, g, sym, bias in [
        (64, 128, 4, 32, False, False),
        (96, 256, 8, None, True, True),
        (10, 72, 3, 24, False, True),
        (384, 1536, 2, 128, True, False),
        (7, 9, 4, None, False, False),
    ]:
        layer = QuantLinear(in_f, out_f, bits=bits, group_size=g, symmetric=sym, bias=bias)
        kwargs = dict(out_features=out_f, in_features=in_f, bits=bits, group_size=g, symmetric=sym, bias=bias)
        cases.append((kwargs, layer.weight_bytes()))
    return run_cases("05 · bytes of a quantized layer", fn, cases)


def check_rtn_groupwise(fn: Callable) -> CheckResult:
    """05 — ``fn(w, bits, group_size)``: asymmetric round-to-nearest per group, dequantized.

    Reference: :func:`course_lib.quant.fake_quantize` with ``symmetric=False``,
    ``granularity="group"`` (fp32 scales).
    """
    import torch

    from course_lib.quant import fake_quantize

    gen = torch.Generator().manual_seed(5)
    cases = []
    for rows, cols, bits, g in [(4, 16, 4, 8), (8, 64, 2, 32), (3, 12, 3, 4), (5, 32, 8, 16)]:
        w = torch.randn(rows, cols, generator=gen) + torch.rand(rows, 1, generator=gen)
        expected = fake_quantize(w, bits=bits, symmetric=False, granularity="group", group_size=g)
        cases.append((dict(w=w.clone(), bits=bits, group_size=g), expected))
    return run_cases("05 · group-wise RTN", fn, cases, rel=1e-5)
