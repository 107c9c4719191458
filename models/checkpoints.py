"""Checkpoint loading and saving: any supported format to an eval model plus a `ModelCard`; never unsafe by default."""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import pickle
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

from core.errors import TaxaLensError

TAXALENS_FORMAT_VERSION = 1
_META_KEY = "taxalens"
# Containers written by training scripts, in order of preference (EMA weights evaluate better when present).
_STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
# Wrapper prefixes to strip from parameter names.
_PREFIXES = (
    "module.",  # DistributedDataParallel / DataParallel
    "_orig_mod.",  # torch.compile
)

logger = logging.getLogger(__name__)


class CheckpointError(TaxaLensError, ValueError):
    """A checkpoint that cannot be loaded as asked; the message says why and what to pass instead."""


@dataclass(frozen=True)
class ModelCard:
    """What a model is and how its inputs must look (the TaxaLens checkpoint's metadata, read the same way)."""

    arch: str  # timm architecture name ("torchscript" for scripted models)
    class_names: tuple[str, ...]  # class names in output order
    input_size: tuple[int, int, int] = (3, 224, 224)  # channels, height, width
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)  # per-channel normalisation mean
    std: tuple[float, ...] = (0.229, 0.224, 0.225)  # per-channel normalisation std
    interpolation: str = "bicubic"  # resize interpolation
    crop_pct: float = 0.875  # centre-crop fraction at eval
    crop_mode: str = "center"  # timm crop mode
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
        return {"arch": self.arch, "classes": list(self.class_names), **self.data_config()}


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


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, memoised on (path, size, mtime)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_class_names(path: str | Path) -> tuple[str, ...]:
    """Class names from a text file (one per line) or a JSON list."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        names = json.loads(text)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names or len(set(names)) != len(names):
        raise CheckpointError(f"class list {path} must name each class once, one per line; got {len(names)} entries")
    return tuple(str(n) for n in names)


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
    TorchScript (`class_names` required). `torch.load(weights_only=True)` always; a pickled `nn.Module` is refused
    unless `trust_checkpoint=True` (it can run arbitrary code when unpickled).
    Raises `CheckpointError` with the fix when the file, arch or class list do not fit together.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    names = tuple(class_names) if class_names is not None else None
    if path.suffix == ".safetensors":
        model, card = _load_safetensors(path, arch, names)
    elif _is_torchscript(path):
        model, card = _load_torchscript(path, arch, names)
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
    return _card_from_metadata(json.loads(metadata[_META_KEY]), path)


def _json_default(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)


def _card_from_metadata(meta: dict, path: str | Path) -> ModelCard:
    try:
        missing = [key for key in ("input_size", "mean", "std") if key not in meta]  # written by every TaxaLens save
        if missing:
            raise KeyError(missing[0])
        return ModelCard.from_data_config(meta, arch=meta["arch"], class_names=tuple(meta["class_names"]),
                                          source_format="taxalens", training=meta.get("training") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: TaxaLens metadata is incomplete ({exc!r}); re-save the checkpoint") from exc


def _load_safetensors(path: Path, arch: str | None, class_names: tuple[str, ...] | None) -> tuple[nn.Module, ModelCard]:
    card = read_model_card(path)
    try:
        state_dict = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable .safetensors file: {exc}") from exc
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
    try:
        # argparse.Namespace is how timm's train.py stores its `args`; it holds plain attributes and runs no code.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise CheckpointError(
                f"{path} is a pickled Python object, not plain weights: loading it would run whatever code it carries "
                f"({str(exc).splitlines()[0][:160]}). Re-save it as a state_dict or .safetensors, or, only if you "
                "trust where it came from, pass --trust-checkpoint (or `trust = true` in taxalens.toml)."
            ) from exc
        obj = torch.load(path, map_location="cpu", weights_only=False)  # explicit opt-in, see message above
        if isinstance(obj, nn.Module):
            return _card_for_module(obj, path, arch, class_names, "pickle")
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
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
                              f"{shapes or str(exc)[:300]}; check --arch") from exc
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


def _load_torchscript(path: Path, arch: str | None, class_names: tuple[str, ...] | None) -> tuple[nn.Module, ModelCard]:
    if class_names is None:
        raise CheckpointError(f"{path} is TorchScript and does not carry class names; pass --classes classes.txt")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is not a loadable TorchScript archive: {exc}") from exc
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
