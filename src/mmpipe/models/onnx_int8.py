"""INT8 ONNX models made from fp32 ones with onnxruntime's quantiser.

``static``: weights and activations in INT8 as QDQ pairs, the activations' ranges calibrated on
real inputs; ONNX Runtime fuses the pairs into QLinearConv/QLinearMatMul, so convolutions run in
INT8 end to end. ``dynamic``: INT8 weights, activation ranges measured on every batch at run time
(ConvInteger/MatMulInteger between float ops): no calibration, but a conv net pays for the
conversions on every layer.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnxruntime as ort

METHODS = ("static", "dynamic")


def settings(method: str) -> dict:
    """What determines the quantised file besides the source model and calibration data."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    # recipe: bump it when the steps of quantize_onnx change what they write.
    common = {"method": method, "recipe": 1, "onnxruntime": ort.__version__, "per_channel": True}
    if method == "static":
        # U8 activations with S8 weights: the combination x86 VNNI kernels are fastest for.
        # Ranges averaged over calibration batches rather than the extremes of all of them: the
        # extremes widen every step and cost resolution (on open_nsfw: max score error 0.11
        # instead of 0.23).
        return {**common, "activations": "QUInt8", "weights": "QInt8", "calibration": "MinMax",
                "moving_average": True}
    # ConvInteger on CPU takes only unsigned weights.
    return {**common, "weights": "QUInt8"}


def quantize_onnx(src: str | Path, dst: str | Path, method: str,
                  calibration: Iterable[dict[str, np.ndarray]] = ()) -> None:
    """Write the INT8 version of ``src`` to ``dst``; ``calibration`` (feeds, e.g. one per batch)
    is read by the ``static`` method only."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_dynamic, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    chosen = settings(method)

    class Feeds(CalibrationDataReader):
        def __init__(self, feeds: Iterator[dict[str, np.ndarray]]):
            self.feeds = feeds

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(prefix="mmpipe-quant-") as tmp:
        folded, pre = Path(tmp, "folded.onnx"), Path(tmp, "pre.onnx")
        subtractions_as_additions(src, folded)
        # Shape inference and graph optimisation before quantising, as onnxruntime recommends:
        # the quantiser needs every tensor's shape, and each node left unfused gets its own
        # quantise/dequantise pair.
        quant_pre_process(str(folded), str(pre))
        weights = QuantType[chosen["weights"]]
        if method == "static":
            quantize_static(pre, dst, Feeds(iter(calibration)), quant_format=QuantFormat.QDQ,
                            per_channel=chosen["per_channel"], weight_type=weights,
                            activation_type=QuantType[chosen["activations"]],
                            calibrate_method=CalibrationMethod[chosen["calibration"]],
                            extra_options={"CalibMovingAverage": chosen["moving_average"]})
        else:
            quantize_dynamic(pre, dst, per_channel=chosen["per_channel"], weight_type=weights)


def subtractions_as_additions(src: str | Path, dst: str | Path) -> None:
    """``x - c`` becomes ``x + (-c)`` wherever ``c`` is a float constant of that node alone.

    Converted models often write batch norm as Sub, Mul, Add after a convolution. onnxruntime
    folds a constant Add or Mul into the convolution's weights, but not a Sub, so the whole norm
    stayed as three float ops, each quantised on its own: on open_nsfw 2.6× slower in INT8, with
    twice the score error."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    uses = Counter(name for node in graph.node for name in node.input)
    for node in graph.node:
        constant = constants.get(node.input[1]) if node.op_type == "Sub" else None
        if constant is not None and uses[constant.name] == 1:
            constant.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(constant), constant.name))
            node.op_type = "Add"
    onnx.save(model, str(dst))
