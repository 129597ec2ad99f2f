"""Typed experiment configuration: plain YAML mapped onto dataclasses, overridable from the command line.

Every key of every YAML file in `configs/` is a field below. Loading is strict: an unknown key, a value of the
wrong type or a malformed override raises `ConfigError` naming the key, so a typo never trains silently with a
default. Defaults are the published recipe of the paper (see METHOD.md).
"""

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reid_accel.errors import ConfigError

DATA_ROOT_ENV = "REID_DATA_ROOT"


class _YamlLoader(yaml.SafeLoader):
    """YAML with only `true` / `false` as booleans (YAML 1.2), so `train.mixed_precision=no` stays the string "no"."""


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


ERASING_RATIO_RULES = ("linear", "log")
NEIGHBOUR_MODES = ("camera_aware", "camera_agnostic")
METHOD_NAMES = ("cail", "camera_proxy")  # the names `reid_accel.methods.METHODS` registers, one per method file
OPTIMIZERS = ("sgd", "adam")
PROXY_KINDS = ("camera", "cluster")
PROXY_UPDATES = ("sequential", "hardest")


@dataclass
class DomainConfig:
    """One dataset: a benchmark name, the folder it was extracted to and its parser options."""

    name: str = "market1501"
    root: str = "Market-1501-v15.09.15"
    options: dict[str, Any] = field(default_factory=dict)

    def resolved_root(self) -> Path:
        """`root` made absolute: relative roots are looked up under `$REID_DATA_ROOT` when it is set."""
        root = Path(os.path.expandvars(self.root)).expanduser()
        if not root.is_absolute() and os.environ.get(DATA_ROOT_ENV):
            root = Path(os.environ[DATA_ROOT_ENV]).expanduser() / root
        return root


@dataclass
class DataConfig:
    """Datasets, image size, augmentation and the batch layout.

    `batch_size` is the global batch of one optimizer step summed over processes, half source and half target.
    `bn_batch_size` is the number of images (half source, half target) whose statistics one BatchNorm computes;
    the published recipe ran 2 GPUs x (64 + 64), so 128. Fewer processes run it as micro-batches, more as
    SyncBatchNorm groups, with the same result (`reid_accel.layout`). None: one group per process, i.e. the
    statistics depend on how many processes run. `preload` decodes every training image once into memory (uint8 at
    the training size: 98 KB an image at 256x128) instead of in loader workers every epoch.
    """

    source: DomainConfig = field(default_factory=DomainConfig)
    target: DomainConfig | None = None
    eval: DomainConfig | None = None
    height: int = 256
    width: int = 128
    batch_size: int = 256
    bn_batch_size: int | None = None
    eval_batch_size: int = 256
    num_workers: int = 4
    preload: bool = False
    pad: int = 10
    flip_prob: float = 0.5
    erasing_prob: float = 0.5
    erasing_ratio_rule: str = "linear"


@dataclass
class ModelConfig:
    """The encoder: a timm backbone with last-stride surgery and a BNNeck.

    `pooling`: "avg" (the backbone's own) or "gem" (generalised mean with a trainable exponent, CNNs only).
    `init_from` starts from a saved reid-accel model instead (a model folder or a Hub repo id, loaded strictly):
    its own config then decides the architecture, and `backbone`, `pretrained`, `pretrained_path`, `last_stride`
    and `pooling` are not used. The domain-adaptive clustering recipes start from a source-trained model this way.
    """

    backbone: str = "resnet50.tv_in1k"
    pretrained: bool = True
    pretrained_path: str | None = None
    last_stride: int = 1
    pooling: str = "avg"
    init_from: str | None = None
    channels_last: bool = False
    compile: bool = False


@dataclass
class MethodConfig:
    """Which training method runs: its settings are its own section (`objective` for "cail")."""

    name: str = "cail"


@dataclass
class ObjectiveConfig:
    """The "cail" method: loss terms and their schedule; epochs are 1-based and a term is on once
    `epoch > *_start_epoch`.

    `neighbour_mode`: "camera_aware" (intra- and inter-camera losses) or the "camera_agnostic" ablation.
    `mixup_lambda_per`: "global" draws one mixup weight per optimizer step; "group" one per BatchNorm group, as
    the original drew one per GPU.
    """

    target_branch: bool = True
    neighbour_mode: str = "camera_aware"
    scale: float = 10.0
    neighbour_eps: float = 0.8
    intra_start_epoch: int = 10
    intra_weight: float = 1.0
    inter_start_epoch: int = 30
    inter_weight: float = 0.5
    agnostic_weight: float = 0.1
    memory_momentum: float = 0.6
    mixup: bool = True
    mixup_start_epoch: int = 1
    mixup_alpha: float = 0.6
    mixup_lambda_per: str = "global"


@dataclass
class CameraProxyConfig:
    """The "camera_proxy" method: re-cluster the target every epoch, contrast each image with a proxy memory.

    Defaults are O2CAP's recipe (CLUSTERING-METHODS.md): k-reciprocal Jaccard distances (`k1`, `k2`), DBSCAN
    (`eps`, `min_samples`), one proxy per (cluster, camera) (`proxies: camera`), offline + online association
    losses at `temperature`, memory rows moved to `normalise(memory_momentum m + (1 - memory_momentum) x)` after
    every step, batches of `data.batch_size / images_per_proxy` proxies x `images_per_proxy` images,
    `steps_per_epoch` steps an epoch. `proxies: cluster` is plain cluster contrast (one centroid per cluster,
    cross-entropy over all centroids), its recipe being `eps` 0.6, `k1` 30, `temperature` 0.05, `memory_momentum`
    0.1, `memory_update: hardest` and `cross_camera: true` (each proxy's other images drawn from other cameras).
    A proxy with fewer than `images_per_proxy` images gives all of them and then repeats some (O2CAP's rule).
    The method trains on `data.target` alone (`data.source` is not read); `train.neighbour_diagnostics` adds the
    clusters' purity against the identities the folder carries (never used for training).
    """

    proxies: str = "camera"
    k1: int = 20
    k2: int = 6
    eps: float = 0.5
    min_samples: int = 4
    images_per_proxy: int = 4
    steps_per_epoch: int = 400
    cross_camera: bool = False
    temperature: float = 0.07
    memory_momentum: float = 0.2
    memory_update: str = "sequential"
    offline_weight: float = 1.0
    online_weight: float = 1.0
    num_negatives: int = 50
    online_positives: int = 3
    online_self_weight: float = 0.15


@dataclass
class OptimConfig:
    """SGD or Adam with two parameter groups (pretrained backbone, new layers) and a multi-step schedule.

    `momentum` is SGD's (Adam keeps its default betas). With `warmup_epochs` w > 0 the learning rates of epoch e
    (1-based) are scaled by `warmup_factor + (1 - warmup_factor) (e - 1) / w` while e <= w, as the clustering
    recipes warm up (0.01 over 10 epochs).
    """

    optimizer: str = "sgd"
    lr_backbone: float = 0.01
    lr_new: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    epochs: int = 70
    milestones: list[int] = field(default_factory=lambda: [60])
    gamma: float = 0.1
    warmup_epochs: int = 0
    warmup_factor: float = 0.01


@dataclass
class TrainConfig:
    """Run-level settings: seeding, precision, length, evaluation, checkpoints, logging and failure handling.

    `mixed_precision: null` leaves the choice to the launcher (`accelerate_config.yaml` or `accelerate config`).
    `max_steps` stops after that many optimizer steps (then evaluates, saves and exports), for smoke runs.
    `collective_timeout_s` bounds how long a process waits for the others before it reports them lost.
    `save_on_each_node` writes checkpoints on every machine, for clusters without a shared filesystem.
    `neighbour_diagnostics` logs how right the target's neighbour sets are, from the identities its folder carries
    (used for logging only, never for training).
    """

    seed: int = 0
    mixed_precision: str | None = None
    output_dir: str = "outputs/run"
    max_steps: int | None = None
    eval_interval: int = 10
    checkpoint_interval: int = 10
    keep_checkpoints: int = 3
    resume: str = "no"
    log_with: str = "auto"
    log_interval: int = 20
    neighbour_diagnostics: bool = True
    deterministic: bool = False
    collective_timeout_s: float = 600.0
    save_on_each_node: bool = False


@dataclass
class ExperimentConfig:
    """The whole experiment, one dataclass per YAML section."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    camera_proxy: CameraProxyConfig = field(default_factory=CameraProxyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check_values(self)

    @property
    def eval_domain(self) -> DomainConfig:
        """The dataset evaluated during training: `data.eval`, else the target, else the source."""
        return self.data.eval or self.data.target or self.data.source

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Rule:
    """What a key allows, as the error message says it, and the test of a value."""

    allowed: str
    ok: Callable[[Any], bool]


def _number(allowed: str, ok: Callable[[float], bool]) -> Rule:
    return Rule(allowed, lambda v: math.isfinite(v) and ok(v))


def _choice(*values: Any) -> Rule:
    return Rule(f"one of {', '.join(map(repr, values))}", lambda v: v in values)


POSITIVE = _number("a number > 0", lambda v: v > 0)
NON_NEGATIVE = _number("a number >= 0", lambda v: v >= 0)
PROBABILITY = _number("a number in [0, 1]", lambda v: 0 <= v <= 1)
MOMENTUM = _number("a number in [0, 1)", lambda v: 0 <= v < 1)
SEED = _number("an integer in [0, 2**32)", lambda v: 0 <= v < 2**32)
NON_EMPTY = Rule("a non-empty string", lambda v: bool(v.strip()))
EXISTING_FILE = Rule("an existing file", lambda v: Path(os.path.expandvars(v)).expanduser().is_file())

# The allowed values of every key, stated once, checked when a config loads (before anything is built). Keys
# not listed are checked for their type only; `None` passes for optional keys. DomainConfig keys apply to
# data.source, data.target and data.eval alike.
DOMAIN_RULES = {"name": NON_EMPTY, "root": NON_EMPTY}
RULES = {
    "data.height": POSITIVE,
    "data.width": POSITIVE,
    "data.batch_size": POSITIVE,
    "data.bn_batch_size": POSITIVE,
    "data.eval_batch_size": POSITIVE,
    "data.num_workers": NON_NEGATIVE,
    "data.pad": NON_NEGATIVE,
    "data.flip_prob": PROBABILITY,
    "data.erasing_prob": PROBABILITY,
    "data.erasing_ratio_rule": _choice(*ERASING_RATIO_RULES),
    "model.backbone": NON_EMPTY,
    "model.pretrained_path": EXISTING_FILE,
    "model.last_stride": _choice(1, 2),
    "model.pooling": _choice("avg", "gem"),
    "model.init_from": NON_EMPTY,
    "method.name": _choice(*METHOD_NAMES),
    "objective.neighbour_mode": _choice(*NEIGHBOUR_MODES),
    "objective.scale": POSITIVE,
    "objective.neighbour_eps": PROBABILITY,
    "objective.intra_start_epoch": NON_NEGATIVE,
    "objective.intra_weight": NON_NEGATIVE,
    "objective.inter_start_epoch": NON_NEGATIVE,
    "objective.inter_weight": NON_NEGATIVE,
    "objective.agnostic_weight": NON_NEGATIVE,
    "objective.memory_momentum": MOMENTUM,
    "objective.mixup_start_epoch": NON_NEGATIVE,
    "objective.mixup_alpha": POSITIVE,
    "objective.mixup_lambda_per": _choice("global", "group"),
    "camera_proxy.proxies": _choice(*PROXY_KINDS),
    "camera_proxy.k1": POSITIVE,
    "camera_proxy.k2": POSITIVE,
    "camera_proxy.eps": _number("a number in (0, 1] (Jaccard distances lie in [0, 1])", lambda v: 0 < v <= 1),
    "camera_proxy.min_samples": _number("an integer >= 2 (1 makes every image a cluster)", lambda v: v >= 2),
    "camera_proxy.images_per_proxy": POSITIVE,
    "camera_proxy.steps_per_epoch": POSITIVE,
    "camera_proxy.temperature": POSITIVE,
    "camera_proxy.memory_momentum": MOMENTUM,
    "camera_proxy.memory_update": _choice(*PROXY_UPDATES),
    "camera_proxy.offline_weight": NON_NEGATIVE,
    "camera_proxy.online_weight": NON_NEGATIVE,
    "camera_proxy.num_negatives": POSITIVE,
    "camera_proxy.online_positives": POSITIVE,
    "camera_proxy.online_self_weight": PROBABILITY,
    "optim.optimizer": _choice(*OPTIMIZERS),
    "optim.lr_backbone": NON_NEGATIVE,
    "optim.lr_new": NON_NEGATIVE,
    "optim.momentum": MOMENTUM,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.epochs": POSITIVE,
    "optim.gamma": POSITIVE,
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.warmup_factor": _number("a number in (0, 1]", lambda v: 0 < v <= 1),
    "train.seed": SEED,
    "train.mixed_precision": _choice("no", "fp16", "bf16"),
    "train.output_dir": NON_EMPTY,
    "train.max_steps": POSITIVE,
    "train.eval_interval": POSITIVE,
    "train.checkpoint_interval": POSITIVE,
    "train.keep_checkpoints": POSITIVE,
    "train.resume": _choice("no", "auto"),
    "train.log_with": _choice("auto", "none", "tensorboard"),
    "train.log_interval": POSITIVE,
    "train.collective_timeout_s": POSITIVE,
}


def _check(key: str, value: Any, rule: Rule) -> None:
    if value is not None and not rule.ok(value):
        raise ConfigError(f"{key}: expected {rule.allowed}, got {value!r}")


def _check_values(cfg: ExperimentConfig) -> None:
    """Every key against its rule, then the rules that relate keys."""
    for key, rule in RULES.items():
        section, name = key.split(".")
        _check(key, getattr(getattr(cfg, section), name), rule)
    for name in ("source", "target", "eval"):
        domain = getattr(cfg.data, name)
        for key, rule in DOMAIN_RULES.items() if domain is not None else ():
            _check(f"data.{name}.{key}", getattr(domain, key), rule)
    if cfg.method.name == "camera_proxy":
        _check_camera_proxy(cfg)
    milestones = cfg.optim.milestones
    if any(not 1 <= m <= cfg.optim.epochs for m in milestones) or milestones != sorted(set(milestones)):
        raise ConfigError(
            f"optim.milestones: expected increasing epochs within 1..{cfg.optim.epochs} (optim.epochs), got {milestones}"
        )


def _check_camera_proxy(cfg: ExperimentConfig) -> None:
    """The rules of the "camera_proxy" method that relate keys."""
    c = cfg.camera_proxy
    if cfg.data.target is None:
        raise ConfigError("data.target: the camera_proxy method clusters data.target's train split; set it")
    if cfg.data.batch_size % c.images_per_proxy:
        raise ConfigError(
            f"camera_proxy.images_per_proxy: {c.images_per_proxy} does not divide data.batch_size="
            f"{cfg.data.batch_size} into whole proxies"
        )
    if cfg.data.bn_batch_size is not None and cfg.data.bn_batch_size % c.images_per_proxy:
        raise ConfigError(
            f"camera_proxy.images_per_proxy: {c.images_per_proxy} does not divide data.bn_batch_size="
            f"{cfg.data.bn_batch_size}: a BatchNorm group must hold whole proxies"
        )
    if c.k2 > c.k1:
        raise ConfigError(f"camera_proxy.k2: {c.k2} exceeds camera_proxy.k1={c.k1} (query expansion within the k1-NN)")


def _convert(value: Any, annotation: Any, key: str) -> Any:
    """Check `value` against a field's annotation, building nested dataclasses; raise naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is Any or (isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))):
        return value
    raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")


def _build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise ConfigError(f"{key}: unknown key (known keys here: {known})")
        kwargs[name] = _convert(value, hints[name], key)
    return cls(**kwargs)


# Keys renamed since configs were first written, and the values they took: old files keep loading.
RENAMED_KEYS = {("objective", "neighbor_mode"): "neighbour_mode", ("objective", "neighbor_eps"): "neighbour_eps"}
RENAMED_VALUES = {("objective", "neighbour_mode"): {0: "camera_agnostic", 1: "camera_aware"}}


def _upgrade_renamed(tree: dict[str, Any]) -> None:
    """Move old spellings of keys (and values) to the current ones, in place; both spellings at once is an error."""
    for (section, old), new in RENAMED_KEYS.items():
        node = tree.get(section)
        if isinstance(node, dict) and old in node:
            if new in node:
                raise ConfigError(f"{section}.{old}: renamed to {section}.{new}; give only one of them")
            node[new] = node.pop(old)
    for (section, key), values in RENAMED_VALUES.items():
        node = tree.get(section)
        if isinstance(node, dict) and type(node.get(key)) is int and node[key] in values:
            node[key] = values[node[key]]


def _apply_override(tree: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (`0.02`, `[40, 60]`, `null`, `fp16`)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r}: expected key=value, e.g. optim.lr_backbone=0.02")
    try:
        value = _load_yaml(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: value is not valid YAML ({err.problem})") from None
    *parents, leaf = key.split(".")
    leaf = RENAMED_KEYS.get((".".join(parents), leaf), leaf)
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
        node = child
    node[leaf] = value


def load_config(path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML file (or start from the defaults when `path` is None) and apply dotted overrides.

    Args:
        path: a YAML file whose top-level sections match `ExperimentConfig`.
        overrides: strings such as `"optim.lr_backbone=0.02"`; applied in order, after the file.

    Returns:
        The validated configuration.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            tree = _load_yaml(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
        _upgrade_renamed(tree)
    for override in overrides:
        _apply_override(tree, override)
    _upgrade_renamed(tree)
    try:
        return _build(ExperimentConfig, tree)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None


def dump_config(cfg: ExperimentConfig) -> str:
    """The resolved configuration as YAML, loadable again with `load_config`."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
