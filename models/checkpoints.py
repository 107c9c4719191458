"""Checkpoint loading and saving: any supported format to an eval model plus a `ModelCard`; never unsafe by default."""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from timm.data import resolve_model_data_config
from torch import nn

from core.checkpoint_header import (  # noqa: F401 (file_sha256, read_class_names re-exported)
    DATA_CONFIG_DEFAULTS,
    METADATA_KEY,
    CheckpointError,
    file_sha256,
    preprocessing_key,
    read_class_names,
)

TAXALENS_FORMAT_VERSION = 1
_META_KEY = METADATA_KEY
# Containers written by training scripts, in order of preference (EMA weights evaluate better when present).
_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
# Input side lengths a checkpoint's metadata may ask for: smaller gives nothing to classify, larger is a typo or a
# resource-exhaustion attempt (a 100,000 px input would allocate tens of GB before the first image).
INPUT_SIDE_RANGE = (32, 1024)
# The first bytes of what `torch.save` writes: a zip archive (PyTorch >= 1.6) or a pickle (protocol 2 to 5).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = tuple(b"\x80" + bytes([protocol]) for protocol in range(2, 6))
# The class an unsafe pickle refers to, in torch's weights-only refusal ("Unsupported global: GLOBAL a.b.C was ...").
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
# Wrapper prefixes to strip from parameter names.
_PREFIXES = (
    "module.",  # DistributedDataParallel / DataParallel
    "_orig_mod.",  # torch.compile
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    """What a model is and how its inputs must look (the TaxaLens checkpoint's metadata, read the same way)."""

    arch: str  # timm architecture name ("torchscript" for scripted models)
    class_names: tuple[str, ...]  # class names in output order
    input_size: tuple[int, int, int] = DATA_CONFIG_DEFAULTS["input_size"]  # channels, height, width
    mean: tuple[float, ...] = DATA_CONFIG_DEFAULTS["mean"]  # per-channel normalisation mean
    std: tuple[float, ...] = DATA_CONFIG_DEFAULTS["std"]  # per-channel normalisation std
    interpolation: str = DATA_CONFIG_DEFAULTS["interpolation"]  # resize interpolation
    crop_pct: float = DATA_CONFIG_DEFAULTS["crop_pct"]  # centre-crop fraction at eval
    crop_mode: str = DATA_CONFIG_DEFAULTS["crop_mode"]  # timm crop mode
    source_format: str = "taxalens"  # taxalens | safetensors | timm-state-dict | timm-train | torchscript | pickle
    sha256: str = ""  # sha256 of the checkpoint file's bytes
    training: dict = field(default_factory=dict)  # how it was trained (config, data hash, per-epoch metrics)
    notes: tuple[str, ...] = ()  # warnings raised while loading (assumed classes, EMA chosen, ...)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def data_config(self) -> dict:
        """The timm data-config dict (`timm.data.create_transform(**card.data_config())`)."""
        return {
            "input_size": tuple(self.input_size),
            "mean": tuple(self.mean),
            "std": tuple(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
            "crop_mode": self.crop_mode,
        }

    @classmethod
    def from_data_config(cls, config: Mapping, *, arch: str, class_names: Sequence[str], **fields: object
                         ) -> ModelCard:
        """A card whose preprocessing comes from a timm data-config dict (`resolve_model_data_config`, or the
        inverse of `data_config`); keys `config` lacks keep the defaults above. `fields`: the other card fields."""
        card = cls(arch=arch, class_names=tuple(class_names), **fields)
        converters = {"input_size": tuple, "mean": tuple, "std": tuple, "interpolation": str, "crop_pct": float,
                      "crop_mode": str}
        return replace(card, **{key: convert(config[key]) for key, convert in converters.items() if key in config})

    def preprocessing_key(self) -> dict:
        """What the predictions cache key must cover besides the weights."""
        return preprocessing_key(self.arch, self.class_names, self.data_config())


def select_device(prefer: str | None = None) -> torch.device:
    """`prefer` if given, else CUDA when present, else Apple MPS, else CPU."""
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def load_checkpoint(
    path: str | Path,
    *,
    arch: str | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
    trust_checkpoint: bool = False,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Load a checkpoint of any supported format and return `(model, card)`; the model is in eval mode on `device`.

    Formats: the TaxaLens `.safetensors` (metadata carries everything), a plain `.safetensors` or timm `state_dict`
    (`arch` and `class_names` required), a timm training-script checkpoint (`state_dict_ema`/`state_dict`, `arch`),
    TorchScript (`class_names` required). `torch.load(weights_only=True)` always; a pickled `nn.Module` and a
    TorchScript archive are refused unless `trust_checkpoint=True` (both are code: unpickling runs whatever the file
    names, and PyTorch's security policy treats TorchScript as a program). A TaxaLens file's metadata is validated
    before any tensor is made.
    Raises `CheckpointError` with the fix when the file is not a checkpoint, or the file, arch or class list do not
    fit together.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    names = tuple(class_names) if class_names is not None else None
    if path.suffix == ".safetensors":
        model, card = _load_safetensors(path, arch, names)
    elif _is_torchscript(path):
        model, card = _load_torchscript(path, arch, names, trust_checkpoint)
    else:
        model, card = _load_torch_pickle(path, arch, names, trust_checkpoint)
    card = replace(card, sha256=file_sha256(path))
    device = torch.device(device) if device is not None else select_device()
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    logger.debug("loaded %s (%s, %s, %d classes) on %s", path, card.source_format, card.arch, card.num_classes, device)
    for note in card.notes:
        logger.info("%s: %s", path.name, note)
    return model, card


def save_taxalens_checkpoint(model: nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Write `model`'s weights and `card` as one `.safetensors` file (metadata in the header; no pickle)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"a TaxaLens checkpoint is a .safetensors file, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)  # unwrap DDP
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    fields = asdict(card)
    for transient in ("sha256", "source_format", "notes"):
        fields.pop(transient)
    fields["format_version"] = TAXALENS_FORMAT_VERSION
    tmp = path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={_META_KEY: json.dumps(fields, default=_json_default)})
    tmp.replace(path)
    return path


def read_model_card(path: str | Path) -> ModelCard | None:
    """The card stored in a TaxaLens checkpoint's header without loading weights; `None` for other files."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError):
        return None
    if _META_KEY not in metadata:
        return None
    try:
        meta = json.loads(metadata[_META_KEY])
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path}: the `{_META_KEY}` metadata in the header is not JSON (at character {exc.pos}); re-save the "
            "checkpoint with TaxaLens (`python -m cli train` or save_taxalens_checkpoint)"
        ) from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: the `{_META_KEY}` metadata in the header is a JSON {type(meta).__name__}, "
                              "not an object; re-save the checkpoint with TaxaLens")
    return _card_from_metadata(meta, path)


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def _card_from_metadata(meta: dict, path: str | Path) -> ModelCard:
    """The card of a TaxaLens header, every field checked (the header is untrusted input: it sizes tensors)."""
    missing = [key for key in ("arch", "class_names", "input_size", "mean", "std") if key not in meta]
    if missing:
        raise CheckpointError(f"{path}: TaxaLens metadata lacks {missing}; re-save the checkpoint with TaxaLens")
    try:
        crop_pct = float(meta.get("crop_pct", DATA_CONFIG_DEFAULTS["crop_pct"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata key `crop_pct` must be a number, got {meta['crop_pct']!r}") from exc
    if not 0.0 < crop_pct <= 2.0:  # timm's own configs go up to 1.15 (volo_d4_448)
        raise CheckpointError(f"{path}: metadata key `crop_pct` must lie in (0, 2], got {crop_pct}")
    for key in ("interpolation", "crop_mode"):
        if not isinstance(meta.get(key, ""), str):
            raise CheckpointError(f"{path}: metadata key `{key}` must be a string, got {meta[key]!r}")
    training = meta.get("training") or {}
    if not isinstance(training, dict):
        raise CheckpointError(f"{path}: metadata key `training` must be an object, got {type(training).__name__}")
    config = {"input_size": _valid_input_size(meta["input_size"], path),
              "mean": _valid_channel_stats(meta["mean"], "mean", path),
              "std": _valid_channel_stats(meta["std"], "std", path),
              "crop_pct": crop_pct, **{key: meta[key] for key in ("interpolation", "crop_mode") if key in meta}}
    return ModelCard.from_data_config(config, arch=_valid_arch(meta["arch"], path),
                                      class_names=_valid_class_names(meta["class_names"], path),
                                      source_format="taxalens", training=training)


def _valid_arch(value: object, path: str | Path) -> str:
    if not isinstance(value, str) or not value:
        raise CheckpointError(f"{path}: metadata key `arch` must be a timm architecture name, got {value!r}")
    if not timm.is_model(value):
        raise CheckpointError(f"{path}: metadata key `arch` names {value[:80]!r}, which timm does not know; "
                              "re-save the checkpoint with the timm name it was trained as (e.g. resnet50)")
    return value


def _valid_class_names(value: object, path: str | Path) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise CheckpointError(f"{path}: metadata key `class_names` must be a non-empty list of names, got "
                              f"{type(value).__name__}")
    bad = [name for name in value if not isinstance(name, str) or not name.strip()]
    if bad:
        raise CheckpointError(f"{path}: metadata key `class_names` holds {len(bad)} empty or non-text name(s) "
                              f"(e.g. {bad[0]!r}); every class needs a name")
    repeated = sorted({name for name in value if value.count(name) > 1})
    if repeated:
        raise CheckpointError(f"{path}: metadata key `class_names` repeats {repeated[:5]}; each output of the model "
                              "needs its own class name")
    return tuple(value)


def _valid_input_size(value: object, path: str | Path) -> tuple[int, int, int]:
    low, high = INPUT_SIDE_RANGE
    ok = (isinstance(value, list) and len(value) == 3
          and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    if not ok or value[0] != 3 or not all(low <= side <= high for side in value[1:]):
        raise CheckpointError(f"{path}: metadata key `input_size` must be [3, height, width] with sides from {low} "
                              f"to {high} pixels, got {str(value)[:60]}")
    return (value[0], value[1], value[2])


def _valid_channel_stats(value: object, key: str, path: str | Path) -> tuple[float, float, float]:
    ok = (isinstance(value, list) and len(value) == 3
          and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value))
    if not ok or (key == "std" and min(value) <= 0):
        rule = "three finite numbers above 0" if key == "std" else "three finite numbers"
        raise CheckpointError(f"{path}: metadata key `{key}` must be {rule} (one per RGB channel), got "
                              f"{str(value)[:60]}")
    return (float(value[0]), float(value[1]), float(value[2]))


def _load_safetensors(path: Path, arch: str | None, class_names: tuple[str, ...] | None) -> tuple[nn.Module, ModelCard]:
    card = read_model_card(path)
    try:
        state_dict = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        detail = str(exc).splitlines()[0].rsplit(":", 1)[-1].strip() if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable .safetensors file (its header cannot be read: {detail}); "
                              "check the path, or copy or download the file again") from exc
    if card is not None:
        if arch and arch != card.arch:
            card = replace(card, notes=card.notes + (f"--arch {arch} ignored: the checkpoint says {card.arch}",))
        model = _build_timm(card.arch, len(card.class_names), path)
        _load_state_dict_strict(model, state_dict, path, card.class_names)
        return model, card
    model, card = _build_from_state_dict(state_dict, path, arch, class_names, "safetensors")
    return model, card


def _load_torch_pickle(
    path: Path, arch: str | None, class_names: tuple[str, ...] | None, trust: bool
) -> tuple[nn.Module, ModelCard]:
    _check_torch_file(path)
    try:
        # argparse.Namespace is how timm's train.py stores its `args`; it holds plain attributes and runs no code.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _UNSUPPORTED_GLOBAL.search(str(exc))
        if unsafe is None:  # not a class the file asks for: the pickle itself is broken
            raise CheckpointError(f"{path} is damaged or not a PyTorch checkpoint: its pickle data cannot be read; "
                                  "check the path, or copy or download the file again") from exc
        if not trust:
            raise CheckpointError(
                f"{path} is a pickled Python object ({unsafe.group(1)}), not plain weights: loading it would run "
                "whatever code it carries. Re-save it as a state_dict or .safetensors, or, only if you trust where "
                "it came from, pass --trust-checkpoint (or `trust = true` in its [[checkpoints]] entry)"
            ) from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit opt-in, see message above
        if isinstance(obj, nn.Module):
            return _card_for_module(obj, path, arch, class_names, "pickle")
    except (RuntimeError, EOFError, zipfile.BadZipFile, IndexError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged or not a PyTorch checkpoint: torch.load could not read it "
                              f"({type(exc).__name__}); check the path, or copy or download the file again") from exc
    if isinstance(obj, nn.Module):
        return _card_for_module(obj, path, arch, class_names, "pickle")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}; expected a state_dict or a training checkpoint")
    state_dict, source = _pick_state_dict(obj)
    if source != "timm-state-dict":
        arch = arch or obj.get("arch") or _arg(obj, "model")
        if class_names is None and isinstance(obj.get("class_names"), list | tuple):
            class_names = tuple(obj["class_names"])
    return _build_from_state_dict(state_dict, path, arch, class_names, source)


def _check_torch_file(path: Path) -> None:
    """Refuse a file that is no `torch.save` output at all (text, an image, random bytes), before torch reads it:
    such a file needs another path, never --trust-checkpoint."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head.startswith(_ZIP_MAGIC) or head[:2] in _PICKLE_MAGIC:
        return
    kind = "a text file" if _looks_like_text(path) else "binary data of no known kind"
    raise CheckpointError(
        f"{path} is not a checkpoint: it is {kind}, not the zip archive or pickle that torch.save writes; check the "
        "path (TaxaLens reads .safetensors files, torch.save state_dicts and training checkpoints, and TorchScript)"
    )


def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as handle:
        sample = handle.read(4096)
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return not any(byte < 9 or 13 < byte < 32 for byte in sample)


def _arg(obj: dict, name: str) -> str | None:
    args = obj.get("args")
    if isinstance(args, argparse.Namespace):
        return getattr(args, name, None)
    if isinstance(args, dict):
        return args.get(name)
    return None


def _pick_state_dict(obj: dict) -> tuple[dict, str]:
    """The weights inside a container, with wrapper prefixes removed."""
    for key in _STATE_DICT_KEYS:
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return _clean_prefixes(inner), "timm-train"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _clean_prefixes(obj), "timm-state-dict"
    raise CheckpointError(f"no weights found: expected tensors or one of the keys {list(_STATE_DICT_KEYS)}, "
                          f"found keys {sorted(obj)[:10]}")


def _clean_prefixes(state_dict: dict) -> dict:
    cleaned = {}
    for key, value in state_dict.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        cleaned[key] = value
    return cleaned


def _build_timm(arch: str, num_classes: int, path: Path) -> nn.Module:
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise CheckpointError(f"{path}: unknown timm architecture {arch!r}; similar names: {close}")
    return timm.create_model(arch, pretrained=False, num_classes=num_classes)


def _head_outputs(model: nn.Module, state_dict: dict) -> tuple[str, int] | None:
    """(classifier weight key, rows in the checkpoint) for the model's classifier, when identifiable."""
    names = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    for name in ([names] if isinstance(names, str) else list(names or [])):
        key = f"{name}.weight"
        if key in state_dict:
            return key, int(state_dict[key].shape[0])
    return None


def _build_from_state_dict(
    state_dict: dict, path: Path, arch: str | None, class_names: tuple[str, ...] | None, source: str
) -> tuple[nn.Module, ModelCard]:
    if not arch:
        raise CheckpointError(f"{path} holds bare weights with no architecture; pass --arch (a timm name such as "
                              "resnet50 or convnext_tiny) or set `arch` for it in taxalens.toml")
    if class_names is None:
        raise CheckpointError(f"{path} does not carry its class names; pass the class list the model was trained with "
                              "(--classes classes.txt, one name per line) or set `classes` in taxalens.toml")
    model = _build_timm(arch, len(class_names), path)
    _load_state_dict_strict(model, state_dict, path, class_names)
    card = ModelCard.from_data_config(
        resolve_model_data_config(model), arch=arch, class_names=class_names, source_format=source,
        notes=("preprocessing taken from timm's default config for this architecture",),
    )
    return model, card


def _load_state_dict_strict(model: nn.Module, state_dict: dict, path: Path, class_names: tuple[str, ...]) -> None:
    head = _head_outputs(model, state_dict)
    if head is not None and head[1] != len(class_names):
        raise CheckpointError(
            f"checkpoint head has {head[1]} outputs but {len(class_names)} class names were given "
            f"({path.name}, {head[0]}); pass the class list the model was trained with (--classes classes.txt)"
        )
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even when strict=False
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line][:3]
        raise CheckpointError(f"{path.name} does not fit the {model.__class__.__name__} architecture: "
                              f"{shapes or str(exc).splitlines()[0]}; check --arch") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path.name} does not fit the {model.__class__.__name__} architecture: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]}); check --arch"
        )


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def _load_torchscript(path: Path, arch: str | None, class_names: tuple[str, ...] | None,
                      trust: bool) -> tuple[nn.Module, ModelCard]:
    if not trust:
        raise CheckpointError(
            f"{path} is TorchScript: a program, not plain weights (PyTorch's security policy treats TorchScript as "
            "executable code; it can read and write files when loaded or run). Re-save the weights as a state_dict "
            "or .safetensors, or, only if you trust where it came from, pass --trust-checkpoint (or `trust = true` "
            "in its [[checkpoints]] entry)"
        )
    if class_names is None:
        raise CheckpointError(f"{path} is TorchScript and does not carry class names; pass --classes classes.txt")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is a damaged TorchScript archive that torch.jit.load cannot read; copy or "
                              "export it again") from exc
    return _card_for_module(model, path, arch, class_names, "torchscript")


def _card_for_module(
    model: nn.Module, path: Path, arch: str | None, class_names: tuple[str, ...] | None, source: str
) -> tuple[nn.Module, ModelCard]:
    if class_names is None:
        raise CheckpointError(f"{path} does not carry its class names; pass --classes classes.txt")
    config = resolve_model_data_config(model) if hasattr(model, "pretrained_cfg") else {}
    outputs = _probe_outputs(model, config.get("input_size", (3, 224, 224)))
    if outputs is not None and outputs != len(class_names):
        raise CheckpointError(f"checkpoint head has {outputs} outputs but {len(class_names)} class names were given "
                              f"({path.name}); pass the class list the model was trained with (--classes classes.txt)")
    card = ModelCard.from_data_config(
        config, arch=arch or ("torchscript" if source == "torchscript" else type(model).__name__),
        class_names=class_names, source_format=source,
    )
    return model, card


def _probe_outputs(model: nn.Module, input_size: tuple[int, ...]) -> int | None:
    try:
        with torch.inference_mode():
            out = model.eval()(torch.zeros(1, *input_size))
    except (RuntimeError, TypeError, ValueError):
        return None
    return int(out.shape[-1]) if isinstance(out, torch.Tensor) and out.ndim == 2 else None
