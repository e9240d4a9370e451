"""How an encoder directory turns text into one vector, read as sentence-transformers reads it: a
sentence-transformers layout (modules.json: Transformer, Pooling, optional Dense layers, optional
Normalize) is run as its own library runs it; a plain Hugging Face encoder gets that library's defaults
for one (mean pooling, no normalisation, inputs truncated at the tokenizer's model_max_length capped by
the model's positions). Read on the login node from JSON files only (no weights, no torch), recorded in
the run's plan with the model, and applied by the encoder engine in the array tasks."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpc_aidc.errors import ConfigError, expected

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# sentence-transformers' boolean keys (older saves), in the order it concatenates the modes
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
ACTIVATIONS = ("identity", "tanh", "relu", "gelu", "sigmoid")
_RUN_ELSEWHERE = ("Run it with --entry, a function that calls SentenceTransformer(...).encode, or save the "
                  "model with Transformer, Pooling, Dense and Normalize modules only.")


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module: linear (weights in `path`), then `activation`."""

    path: str  # relative to the model directory
    in_features: int
    out_features: int
    bias: bool
    activation: str  # one of ACTIVATIONS

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DenseLayer:
        return cls(str(d["path"]), int(d["in_features"]), int(d["out_features"]), bool(d["bias"]),
                   str(d["activation"]))


@dataclass(frozen=True)
class EncoderRecipe:
    """Everything between the transformer's last hidden state and the output vector."""

    layout: str  # sentence-transformers | hf
    pooling: tuple[str, ...] = ("mean",)  # concatenated in this order
    include_prompt: bool = True  # False: the prompt's tokens are left out of the pooling
    max_seq_length: int | None = None  # None: the tokenizer's model_max_length, capped by the positions
    lower_case: bool = False  # lower-case the text before the tokenizer's own normaliser
    prompt: str = ""  # prepended to every text (the model's default prompt)
    dense: tuple[DenseLayer, ...] = ()
    normalize: bool = False  # unit length (the Normalize module)

    def width(self, hidden: int | None) -> int | None:
        """The output vector's width for a transformer of `hidden` units."""
        if self.dense:
            return self.dense[-1].out_features
        return hidden * len(self.pooling) if hidden else None

    def to_json(self) -> dict[str, Any]:
        return {"layout": self.layout, "pooling": list(self.pooling), "include_prompt": self.include_prompt,
                "max_seq_length": self.max_seq_length, "lower_case": self.lower_case, "prompt": self.prompt,
                "dense": [layer.__dict__ for layer in self.dense], "normalize": self.normalize}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EncoderRecipe:
        return cls(str(d["layout"]), tuple(d["pooling"]), bool(d["include_prompt"]), d["max_seq_length"],
                   bool(d["lower_case"]), str(d["prompt"]), tuple(DenseLayer.from_json(x) for x in d["dense"]),
                   bool(d["normalize"]))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(expected(f"a readable JSON file {path}", type(exc).__name__,
                                   "Check the model directory (save it again with sentence-transformers).")) from None
    if not isinstance(value, dict):
        raise ConfigError(expected(f"a JSON object in {path}", type(value).__name__, "Check the model directory."))
    return value


def _inside(root: Path, relative: str) -> Path:
    """A module folder named by modules.json, kept inside the model directory."""
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise ConfigError(expected(f"module paths inside {root}", relative, "Fix modules.json."))
    return path


def module_files(root: Path) -> list[Path]:
    """The JSON files of a sentence-transformers layout and its Dense weights (the model's fingerprint
    must change when any of them does)."""
    if not (root / "modules.json").is_file():
        return []
    out = [root / "modules.json"]
    for entry in json.loads((root / "modules.json").read_text(encoding="utf-8")):
        folder = _inside(root, str(entry.get("path", "")))
        if folder != root and folder.is_dir():
            out += [p for p in sorted(folder.iterdir()) if p.is_file()]
    return out


def encoder_recipe(root: Path) -> EncoderRecipe:
    """The recipe of the encoder in `root`; ConfigError (naming the module and a way out) for a layout
    this engine cannot run exactly as sentence-transformers does."""
    if not (root / "modules.json").is_file():
        return EncoderRecipe("hf")
    try:
        modules = json.loads((root / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(expected(f"a readable {root / 'modules.json'}", type(exc).__name__,
                                   "Check the model directory.")) from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ConfigError(expected("modules.json to be a list of modules", type(modules).__name__,
                                   "Check the model directory."))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"]:
        raise ConfigError(expected("a sentence-transformers model that starts with Transformer and Pooling",
                                   " -> ".join(kinds), _RUN_ELSEWHERE))
    rest = kinds[2:]
    dense_count = 0
    while dense_count < len(rest) and rest[dense_count] == "Dense":
        dense_count += 1
    if rest[dense_count:] not in ([], ["Normalize"]):
        raise ConfigError(expected("Transformer, Pooling, then Dense layers and Normalize (optional, in that order)",
                                   " -> ".join(kinds), _RUN_ELSEWHERE))
    transformer = _inside(root, str(modules[0].get("path", "")))
    if transformer != root:
        raise ConfigError(expected("the Transformer module at the top of the model directory (path \"\")",
                                   modules[0].get("path"), _RUN_ELSEWHERE))
    bert = _read_json(root / "sentence_bert_config.json") if (root / "sentence_bert_config.json").is_file() else {}
    pooling_cfg = _read_json(_inside(root, str(modules[1].get("path", ""))) / "config.json")
    pooling = _pooling_modes(pooling_cfg)
    dense = tuple(_dense(root, m) for m in modules[2:2 + dense_count])
    max_len = bert.get("max_seq_length")
    if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1):
        raise ConfigError(expected("max_seq_length to be a positive integer", max_len,
                                   f"Fix {root / 'sentence_bert_config.json'}."))
    return EncoderRecipe(
        "sentence-transformers", pooling, bool(pooling_cfg.get("include_prompt", True)), max_len,
        bool(bert.get("do_lower_case", False)), _default_prompt(root), dense, rest[dense_count:] == ["Normalize"])


def _pooling_modes(cfg: dict[str, Any]) -> tuple[str, ...]:
    mode = cfg.get("pooling_mode")
    if mode is None:
        modes = tuple(m for key, m in _LEGACY_POOLING_KEYS.items() if cfg.get(key))
        modes = modes or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(str(m) for m in mode)
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad or not modes:
        raise ConfigError(expected(f"pooling modes from {', '.join(POOLING_MODES)}", bad or modes, _RUN_ELSEWHERE))
    return modes


def _dense(root: Path, module: dict[str, Any]) -> DenseLayer:
    folder = _inside(root, str(module.get("path", "")))
    cfg = _read_json(folder / "config.json")
    activation = str(cfg.get("activation_function", "torch.nn.modules.linear.Identity")).rsplit(".", 1)[-1].lower()
    if activation not in ACTIVATIONS or cfg.get("use_residual") or \
            cfg.get("module_input_name", "sentence_embedding") != "sentence_embedding":
        raise ConfigError(expected(f"a Dense layer with an activation from {', '.join(ACTIVATIONS)} and no residual",
                                   f"{folder.name}: {cfg.get('activation_function')}", _RUN_ELSEWHERE))
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise ConfigError(expected(f"the Dense layer's weights in {folder}", "none",
                                   "Save the model again with sentence-transformers."))
    return DenseLayer(str(folder.relative_to(root)), int(cfg["in_features"]), int(cfg["out_features"]),
                      bool(cfg.get("bias", True)), activation)


def _default_prompt(root: Path) -> str:
    """The prompt sentence-transformers prepends when encode() is given none: the default prompt name's."""
    path = root / "config_sentence_transformers.json"
    if not path.is_file():
        return ""
    cfg = _read_json(path)
    name = cfg.get("default_prompt_name")
    prompts = cfg.get("prompts") or {}
    if not name:
        return ""
    if not isinstance(prompts, dict) or not isinstance(prompts.get(name), str):
        raise ConfigError(expected(f"the default prompt {name!r} among the model's prompts", sorted(prompts),
                                   f"Fix {path}."))
    return str(prompts[name])
