"""Write a float32 dense MLP as a `.tflite` flatbuffer directly, without TensorFlow.

The gateway is an aarch64 box without TensorFlow, so a policy trained there (numpy,
`agent.control.mlp`) is serialised here with `flatbuffers` and the TFLite schema's generated
Python code (the `tflite` package): one subgraph, input `[1, n_in]` float32, one
FULLY_CONNECTED operator per layer (weights stored `[n_out, n_in]`, bias `[n_out]`, output
`[1, n_out]`), the output of the last layer `[1, n_out]`.

Activations: `relu` is fused into the FULLY_CONNECTED operator (the float kernel supports it);
`tanh` is a separate TANH operator after a FULLY_CONNECTED with no fused activation - the
float FULLY_CONNECTED kernel accepts only NONE/RELU/RELU_N1_TO_1/RELU6 as fused activations
and refuses TANH at `allocate_tensors`, which is also why TensorFlow's converter emits a
separate TANH for a Keras `Dense(activation="tanh")`. `linear` (or `none`) adds nothing.

Layers use the numpy convention `y = act(x @ w + b)` with `w` of shape `(n_in, n_out)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import flatbuffers
import numpy as np
import tflite as tfl  # the schema's generated code: builder functions at package level
from tflite import (
    ActivationFunctionType,
    BuiltinOperator,
    BuiltinOptions,
    FullyConnectedOptionsWeightsFormat,
    TensorType,
)

SCHEMA_VERSION = 3  # TFLite schema version the interpreter expects ("TFL3")
FILE_IDENTIFIER = b"TFL3"
ACTIVATIONS = ("linear", "relu", "tanh")
_ALIASES = {None: "linear", "none": "linear", "linear": "linear", "relu": "relu", "tanh": "tanh"}
_DATA_ALIGN = 16  # constant buffers aligned like the converter's

Layer = tuple[np.ndarray, np.ndarray, str | None]  # (w (n_in, n_out), b (n_out,), activation)


class WriterError(ValueError):
    """The layers do not describe a dense MLP this writer can serialise."""


def activation_name(act: str | None) -> str:
    """Canonical activation name (`linear`, `relu`, `tanh`); `None`/`none` mean linear."""
    key = act.lower() if isinstance(act, str) else act
    if key not in _ALIASES:
        raise WriterError(f"activation {act!r} not supported (one of {ACTIVATIONS} or none)")
    return _ALIASES[key]


def _check_layers(layers: Sequence[Layer]) -> list[tuple[np.ndarray, np.ndarray, str]]:
    if not layers:
        raise WriterError("an MLP needs at least one layer")
    out: list[tuple[np.ndarray, np.ndarray, str]] = []
    n_prev: int | None = None
    for i, (w, b, act) in enumerate(layers):
        w32 = np.asarray(w, np.float32)
        b32 = np.asarray(b, np.float32)
        if w32.ndim != 2 or b32.shape != (w32.shape[1],):
            raise WriterError(
                f"layer {i}: weights {w32.shape} and bias {b32.shape} are not (n_in, n_out), "
                "(n_out,)"
            )
        if min(w32.shape) < 1:
            raise WriterError(f"layer {i}: empty weights {w32.shape}")
        if n_prev is not None and w32.shape[0] != n_prev:
            raise WriterError(f"layer {i}: takes {w32.shape[0]} inputs, previous gives {n_prev}")
        if not (np.all(np.isfinite(w32)) and np.all(np.isfinite(b32))):
            raise WriterError(f"layer {i}: weights or bias not finite")
        out.append((w32, b32, activation_name(act)))
        n_prev = w32.shape[1]
    return out


def _int_vector(builder: flatbuffers.Builder, values: Sequence[int]) -> int:
    return int(builder.CreateNumpyVector(np.asarray(values, np.int32)))


def _data_vector(builder: flatbuffers.Builder, data: bytes) -> int:
    """A ubyte vector whose payload starts on a 16-byte boundary of the final buffer."""
    builder.StartVector(1, len(data), _DATA_ALIGN)
    builder.head = builder.head - len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return int(builder.EndVector())


def mlp_to_tflite(
    layers: Sequence[Layer],
    *,
    input_name: str = "features",
    output_name: str = "output",
    description: str = "edgeloop tflite_writer: dense MLP, float32",
) -> bytes:
    """The `.tflite` flatbuffer of `layers` (each `(w (n_in, n_out), b (n_out,), act)`)."""
    checked = _check_layers(layers)
    n_in = checked[0][0].shape[0]

    # tensors: (name, shape, buffer payload or None); buffer 0 is the schema's empty sentinel
    tensors: list[tuple[str, list[int], bytes | None]] = [(input_name, [1, n_in], None)]
    # operators: (opcode, inputs, outputs, fused activation or None for a non-FC op)
    ops: list[tuple[int, list[int], list[int], int | None]] = []
    cur = 0
    for i, (w, b, act) in enumerate(checked):
        last = i == len(checked) - 1
        n_out = w.shape[1]
        w_idx = len(tensors)
        # TFLite stores FC weights as [n_out, n_in]
        tensors.append((f"dense_{i}/weights", [n_out, w.shape[0]], w.T.tobytes(order="C")))
        b_idx = len(tensors)
        tensors.append((f"dense_{i}/bias", [n_out], b.tobytes()))
        fused = ActivationFunctionType.RELU if act == "relu" else ActivationFunctionType.NONE
        fc_name = output_name if last and act != "tanh" else f"dense_{i}/fc"
        fc_idx = len(tensors)
        tensors.append((fc_name, [1, n_out], None))
        ops.append((BuiltinOperator.FULLY_CONNECTED, [cur, w_idx, b_idx], [fc_idx], fused))
        cur = fc_idx
        if act == "tanh":
            t_idx = len(tensors)
            tensors.append((output_name if last else f"dense_{i}/tanh", [1, n_out], None))
            ops.append((BuiltinOperator.TANH, [cur], [t_idx], None))
            cur = t_idx
    out_idx = cur

    opcodes = sorted({op[0] for op in ops})
    builder = flatbuffers.Builder(1024 + sum(len(t[2] or b"") + 64 for t in tensors))

    # buffers: 0 = empty sentinel, then one per constant tensor in tensor order
    payloads = [t[2] for t in tensors if t[2] is not None]
    data_offsets = [_data_vector(builder, p) for p in payloads]
    buffer_offsets = []
    tfl.BufferStart(builder)
    buffer_offsets.append(tfl.BufferEnd(builder))
    for d in data_offsets:
        tfl.BufferStart(builder)
        tfl.BufferAddData(builder, d)
        buffer_offsets.append(tfl.BufferEnd(builder))

    tensor_offsets = []
    next_buffer = 1
    for name, shape, payload in tensors:
        name_off = builder.CreateString(name)
        shape_off = _int_vector(builder, shape)
        buf_idx = 0
        if payload is not None:
            buf_idx, next_buffer = next_buffer, next_buffer + 1
        tfl.TensorStart(builder)
        tfl.TensorAddShape(builder, shape_off)
        tfl.TensorAddType(builder, TensorType.FLOAT32)
        tfl.TensorAddBuffer(builder, buf_idx)
        tfl.TensorAddName(builder, name_off)
        tensor_offsets.append(tfl.TensorEnd(builder))

    op_offsets = []
    for code, ins, outs, fused in ops:
        ins_off, outs_off = _int_vector(builder, ins), _int_vector(builder, outs)
        opts = None
        if fused is not None:
            tfl.FullyConnectedOptionsStart(builder)
            tfl.FullyConnectedOptionsAddFusedActivationFunction(builder, fused)
            tfl.FullyConnectedOptionsAddWeightsFormat(
                builder, FullyConnectedOptionsWeightsFormat.DEFAULT
            )
            tfl.FullyConnectedOptionsAddKeepNumDims(builder, False)
            opts = tfl.FullyConnectedOptionsEnd(builder)
        tfl.OperatorStart(builder)
        tfl.OperatorAddOpcodeIndex(builder, opcodes.index(code))
        tfl.OperatorAddInputs(builder, ins_off)
        tfl.OperatorAddOutputs(builder, outs_off)
        if opts is not None:
            tfl.OperatorAddBuiltinOptionsType(builder, BuiltinOptions.FullyConnectedOptions)
            tfl.OperatorAddBuiltinOptions(builder, opts)
        op_offsets.append(tfl.OperatorEnd(builder))

    def table_vector(start: object, offsets: list[int]) -> int:
        start(builder, len(offsets))  # type: ignore[operator]
        for off in reversed(offsets):
            builder.PrependUOffsetTRelative(off)
        return int(builder.EndVector())

    sg_tensors = table_vector(tfl.SubGraphStartTensorsVector, tensor_offsets)
    sg_ops = table_vector(tfl.SubGraphStartOperatorsVector, op_offsets)
    sg_inputs = _int_vector(builder, [0])
    sg_outputs = _int_vector(builder, [out_idx])
    sg_name = builder.CreateString("main")
    tfl.SubGraphStart(builder)
    tfl.SubGraphAddTensors(builder, sg_tensors)
    tfl.SubGraphAddInputs(builder, sg_inputs)
    tfl.SubGraphAddOutputs(builder, sg_outputs)
    tfl.SubGraphAddOperators(builder, sg_ops)
    tfl.SubGraphAddName(builder, sg_name)
    subgraph = tfl.SubGraphEnd(builder)

    code_offsets = []
    for code in opcodes:
        tfl.OperatorCodeStart(builder)
        tfl.OperatorCodeAddDeprecatedBuiltinCode(builder, code)  # codes < 127
        tfl.OperatorCodeAddBuiltinCode(builder, code)
        tfl.OperatorCodeAddVersion(builder, 1)
        code_offsets.append(tfl.OperatorCodeEnd(builder))

    m_codes = table_vector(tfl.ModelStartOperatorCodesVector, code_offsets)
    m_subgraphs = table_vector(tfl.ModelStartSubgraphsVector, [subgraph])
    m_buffers = table_vector(tfl.ModelStartBuffersVector, buffer_offsets)
    m_desc = builder.CreateString(description)
    tfl.ModelStart(builder)
    tfl.ModelAddVersion(builder, SCHEMA_VERSION)
    tfl.ModelAddOperatorCodes(builder, m_codes)
    tfl.ModelAddSubgraphs(builder, m_subgraphs)
    tfl.ModelAddDescription(builder, m_desc)
    tfl.ModelAddBuffers(builder, m_buffers)
    model = tfl.ModelEnd(builder)
    builder.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def write_mlp(path: str | Path, layers: Sequence[Layer], **kwargs: str) -> Path:
    """Write `mlp_to_tflite(layers, **kwargs)` to `path` (atomically: temp file, rename)."""
    p = Path(path)
    blob = mlp_to_tflite(layers, **kwargs)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_bytes(blob)
    tmp.replace(p)
    return p
