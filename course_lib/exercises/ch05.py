"""Chapter 05 (quantization): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, check_prediction, run_cases


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


def check_int4_slowdown_prediction(predicted, measured: float) -> CheckResult:
    """05 — the learner's predicted time ratio (int4 ``QuantLinear`` / fp32 ``nn.Linear``, one token).

    ``predicted``: a number or a function of no arguments returning one; ``measured``: the
    ratio the notebook just timed. Never fails on the value (machines differ); it reports how
    far a bytes-moved model was from this machine's measurement, and why it misses.
    """
    return check_prediction(
        "05 · time of an int4 layer",
        predicted,
        measured,
        unit="× (int4 QuantLinear time / fp32 nn.Linear time)",
        explain=(
            "A bytes-moved model counts every pass over the weight: unpacking the nibbles, widening the codes "
            "to fp32, subtracting the zero-points, multiplying by the scales, then the product itself. It "
            "usually comes out too low: each of those PyTorch operations allocates a fresh weight-sized tensor "
            "(new memory the system must hand out page by page), runs as a separate pass on few threads, and "
            "pays a fixed dispatch cost; and when the fp32 weight fits in the last-level cache, nn.Linear reads "
            "it from cache, not memory, which makes the baseline faster than the model assumes. A fused kernel "
            "that reads the packed codes inside the product does none of those passes."
        ),
    )
