"""The Open Inference Protocol's (V2 REST) tensors: a request decoded, an answer encoded. No HTTP, no maths.

A V2 request is one JSON document, or (the *binary tensor data* extension, which ``tritonclient`` uses by default)
a JSON header of ``Inference-Header-Content-Length`` bytes followed by the tensors' raw bytes, each input naming
its share in ``parameters.binary_data_size``. Answers are encoded the same two ways: an output is sent as raw
bytes when the request asks for it (``outputs[i].parameters.binary_data``, or ``parameters.binary_data_output``
for every output not named), else as a JSON ``data`` list.

Only what this service needs is decoded: ``FP64`` and ``FP32`` inputs (little-endian, row-major), ``FP64`` and
``BYTES`` outputs. A not-a-number in an input (a raw NaN, or the token ``NaN`` that Python's and tritonclient's
JSON writers emit) is read as "not measured", like JSON's ``null``. Every refusal is a
:class:`TensorError` whose message names the tensor and the rule and never holds a value of the request.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np  # FP32 JSON elements are rounded as numpy's float32 holds them
import orjson

__all__ = [
    "BINARY_MEDIA_TYPE",
    "HEADER_LENGTH",
    "INPUT_DATATYPES",
    "InferRequest",
    "InputTensor",
    "OutputTensor",
    "RequestedOutput",
    "TensorError",
    "decode_request",
    "encode_response",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The binary extension's header: the length in bytes of the JSON part of a request or an answer."""
BINARY_MEDIA_TYPE = "application/octet-stream"
INPUT_DATATYPES: dict[str, str] = {"FP64": "<f8", "FP32": "<f4"}
"""The input datatypes read, with their little-endian numpy types."""
_STRUCT_CODES = {"FP64": "d", "FP32": "f"}
_ITEMSIZES = {"FP64": 8, "FP32": 4}

# KServe's client also sends the model's name in the body (the path names it already)
_REQUEST_KEYS = frozenset({"id", "model_name", "model_version", "parameters", "inputs", "outputs"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "parameters", "data"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_MAX_NAME = 64


class TensorError(ValueError):
    """A request that breaks the protocol or the tensor rules (400); the message holds no value of the request."""


@dataclass(frozen=True)
class InputTensor:
    """One input: its name, datatype and shape, and its elements in row-major order (``None``: not measured)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: list[float | None]


@dataclass(frozen=True)
class RequestedOutput:
    """An output the request names, and whether it wants it as raw bytes (``None``: the request's default)."""

    name: str
    binary: bool | None


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request. ``outputs`` is ``None`` when the request names none (then: all of them)."""

    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None
    parameters: dict[str, Any]
    binary_output: bool


@dataclass(frozen=True)
class OutputTensor:
    """One output: ``FP64`` (``data``: floats) or ``BYTES`` (``data``: strings), row-major, ``shape`` as sent."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[float] | list[str]


def _quote(name: object) -> str:
    text = str(name)
    return repr(text if len(text) <= _MAX_NAME else text[: _MAX_NAME - 1] + "…")


def _object(value: Any, what: str, allowed: frozenset[str]) -> dict[str, Any]:
    if type(value) is not dict:
        raise TensorError(f"{what} must be a JSON object.")
    if not value.keys() <= allowed:
        unknown = sorted(set(value) - allowed)
        raise TensorError(f"{what} has unknown key(s): {', '.join(_quote(k) for k in unknown[:5])}.")
    return value


def _parameters(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise TensorError(f"{what}.parameters must be a JSON object.")
    return value


def _flag(parameters: dict[str, Any], key: str, what: str) -> bool | None:
    value = parameters.get(key)
    if value is not None and type(value) is not bool:
        raise TensorError(f"{what}.parameters.{key} must be true or false.")
    return value


def _flatten(data: list[Any], depth: int, what: str) -> list[Any]:
    """``data`` flat or nested (at most ``depth`` lists deep, as the shape allows), in row-major order."""
    out: list[Any] = []

    def walk(items: list[Any], level: int) -> None:
        for item in items:
            if type(item) is list:
                if level >= depth:
                    raise TensorError(f"{what}.data is nested deeper than its shape.")
                walk(item, level + 1)
            else:
                out.append(item)

    walk(data, 1)
    return out


def _number(value: Any) -> float | None:
    """A JSON element of a float tensor: a number, or ``null`` (not measured); a non-finite NaN reads as ``None``."""
    if value is None:
        return None
    if type(value) is float:
        return None if math.isnan(value) else value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:  # far outside every range: refused as such by the record's rules
            return math.copysign(math.inf, value)
    raise ValueError


def _json_values(data: Any, shape: list[int], count: int, datatype: str, name: str) -> list[float | None]:
    """A JSON tensor's elements as floats (``None``: not measured), checked against its shape."""
    if type(data) is not list:
        raise TensorError(f"input {_quote(name)}.data must be a JSON list.")
    flat = data if all(type(v) is float for v in data) else _flatten(data, len(shape), f"input {_quote(name)}")
    if len(flat) != count:
        raise TensorError(f"input {_quote(name)}: data holds {len(flat)} elements; shape {shape} needs {count}.")
    try:
        values = [_number(v) for v in flat]
    except ValueError:
        raise TensorError(
            f"input {_quote(name)}: {datatype} data must hold numbers (or null for not measured)."
        ) from None
    if datatype == "FP32":
        # the value the client's float32 holds, as the binary path reads it
        values = [None if v is None else float(np.float32(v)) for v in values]
    return values


def _refuse_binary(
    tensor: dict[str, Any], name: str, datatype: str, shape: list[int], size: Any, needs: int, left: int
) -> None:
    """Why a binary input does not fit (only called once one of its checks failed)."""
    what = f"input {_quote(name)}"
    if "data" in tensor:
        raise TensorError(f"{what} has both data and parameters.binary_data_size.")
    if type(size) is not int or size < 0:
        raise TensorError(f"{what}.parameters.binary_data_size must be a non-negative integer.")
    if size != needs:
        raise TensorError(f"{what}: binary_data_size is {size} bytes; shape {shape} of {datatype} needs {needs}.")
    raise TensorError(f"{what}: the binary data is shorter than the binary_data_size of the inputs ({left} left).")


def _decode_input(raw: Any, index: int, binary: memoryview, offset: int) -> tuple[InputTensor, int]:
    # the checks come first and the words of a refusal only when there is one: this runs once per input of
    # every request
    tensor = _object(raw, f"inputs[{index}]", _INPUT_KEYS)
    name = tensor.get("name")
    if type(name) is not str or not name:
        raise TensorError(f"inputs[{index}].name must be a non-empty string.")
    datatype = tensor.get("datatype")
    if datatype not in INPUT_DATATYPES:
        shown = _quote(datatype) if isinstance(datatype, str) else "not a string"
        raise TensorError(f"input {_quote(name)}: datatype {shown} is not accepted; send FP64 or FP32.")
    shape = tensor.get("shape")
    if type(shape) is not list or not 0 < len(shape) <= 8 or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorError(f"input {_quote(name)}.shape must be a list of 1 to 8 non-negative integers.")
    count = math.prod(shape)
    parameters = tensor.get("parameters")
    if parameters is None:
        size = None
    elif type(parameters) is dict:
        size = parameters.get("binary_data_size")
    else:
        raise TensorError(f"input {_quote(name)}.parameters must be a JSON object.")
    if size is None:
        if "data" not in tensor:
            raise TensorError(f"input {_quote(name)} has neither data nor parameters.binary_data_size.")
        values = _json_values(tensor["data"], shape, count, datatype, name)
        return InputTensor(name, datatype, tuple(shape), values), offset
    itemsize = _ITEMSIZES[datatype]
    if "data" in tensor or type(size) is not int or size != count * itemsize or offset + size > len(binary):
        _refuse_binary(tensor, name, datatype, shape, size, count * itemsize, len(binary) - offset)
    # little-endian, row-major; a float32 becomes the double that holds it exactly
    floats = struct.unpack_from(f"<{count}{_STRUCT_CODES[datatype]}", binary, offset)
    read: list[float | None] = [None if math.isnan(v) else v for v in floats]
    return InputTensor(name, datatype, tuple(shape), read), offset + size


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """The request in ``body``; ``header_length`` is the ``Inference-Header-Content-Length`` header, if sent."""
    if header_length is None:
        head, binary = body, memoryview(b"")
    else:
        text = header_length.strip()
        if not text.isdigit() or not 0 < int(text) <= len(body):
            raise TensorError(f"{HEADER_LENGTH} must be the length of the JSON header, within the body's length.")
        head, binary = body[: int(text)], memoryview(body)[int(text) :]
    try:
        document = orjson.loads(head)
    except orjson.JSONDecodeError:
        # tritonclient writes a NaN element of a JSON tensor as the bare token NaN (Python's json does), which
        # strict JSON has not: read it (not measured, as null), and Infinity (refused by the ranges)
        try:
            document = json.loads(head)
        except (ValueError, RecursionError):
            raise TensorError("The request (or its JSON header) is not valid JSON.") from None
    request = _object(document, "The request", _REQUEST_KEYS)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise TensorError("id must be a string.")
    for key in ("model_name", "model_version"):
        if not isinstance(request.get(key, ""), str):
            raise TensorError(f"{key} must be a string.")
    parameters = _parameters(request.get("parameters"), "The request")
    binary_output = bool(_flag(parameters, "binary_data_output", "The request"))
    raw_inputs = request.get("inputs")
    if type(raw_inputs) is not list or not raw_inputs:
        raise TensorError("inputs must be a non-empty list of tensors.")
    inputs: list[InputTensor] = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        tensor, offset = _decode_input(raw, i, binary, offset)
        inputs.append(tensor)
    if offset != len(binary):
        raise TensorError("The binary data is longer than the binary_data_size of the inputs.")
    outputs: list[RequestedOutput] | None = None
    raw_outputs = request.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise TensorError("outputs must be a list.")
        outputs = []
        for i, raw in enumerate(raw_outputs):
            out = _object(raw, f"outputs[{i}]", _OUTPUT_KEYS)
            name = out.get("name")
            if not isinstance(name, str) or not name:
                raise TensorError(f"outputs[{i}].name must be a non-empty string.")
            out_parameters = _parameters(out.get("parameters"), f"outputs[{i}]")
            outputs.append(RequestedOutput(name, _flag(out_parameters, "binary_data", f"outputs[{i}]")))
    return InferRequest(request_id, inputs, outputs, parameters, binary_output)


def _bytes_elements(strings: Sequence[str]) -> bytes:
    """BYTES elements as the binary extension sends them: each one a 4-byte little-endian length, then its bytes."""
    encoded = [s.encode() for s in strings]
    return b"".join(len(raw).to_bytes(4, "little") + raw for raw in encoded)


def encode_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: Sequence[OutputTensor],
    binary: Sequence[bool],
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """The answer's bytes, and the length of its JSON header when some output is sent as raw bytes (else None)."""
    document: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = parameters
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor, as_bytes in zip(outputs, binary, strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if not as_bytes:
            entry["data"] = tensor.data
        else:
            if tensor.datatype == "BYTES":
                blob = _bytes_elements(tensor.data)  # type: ignore[arg-type]
            else:
                blob = struct.pack(f"<{len(tensor.data)}d", *tensor.data)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        tensors.append(entry)
    document["outputs"] = tensors
    head = orjson.dumps(document)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
