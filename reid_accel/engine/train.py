"""The training loop: camera-aware invariance learning + cross-domain mixup under accelerate.

One process::

    reid-accel train configs/duke2market.yaml --output-dir runs/duke2market

Several GPUs or nodes (the launcher starts one process per GPU; `data.batch_size` is the global batch)::

    accelerate launch --config_file accelerate_config.yaml -m reid_accel.train configs/duke2market.yaml

The order follows accelerate's examples: Accelerator -> seed -> data -> model -> optimizer -> prepare -> loop.
Each step runs one forward over [source | target] (the backbone's BatchNorm sees both halves), computes the
objective against the memory as it was before the step, steps the optimizer, and only then writes the gathered
target features into the exemplar memory, identically on every process.
"""

import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reid_accel.config import DomainConfig, ExperimentConfig, dump_config
from reid_accel.data import (
    BatchAugmentation,
    CrossDomainBatchSampler,
    CrossDomainDataset,
    ReIDImageDataset,
    build_transform,
    load_benchmark,
)
from reid_accel.data.samplers import seeded_generator
from reid_accel.engine.evaluate import evaluate_retrieval
from reid_accel.engine.report import RunRecorder, environment_info
from reid_accel.engine.state import TrainState, checkpoint_dirs, load_latest_checkpoint, save_checkpoint
from reid_accel.errors import ConfigError
from reid_accel.modeling import CrossDomainNetwork, ExemplarMemory, ReIDEncoder
from reid_accel.objectives import (
    CAILObjective,
    learning_rate_factor,
    memory_momentum,
    mix_pixels,
    sample_mixup_lambda,
)

logger = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Raised after a SIGINT/SIGTERM once the current step finished and a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint saved to {checkpoint}")
        self.signum = signum


@dataclass
class TrainResult:
    output_dir: Path
    evaluations: list[dict]
    model_dir: Path


def build_accelerator(cfg: ExperimentConfig) -> Accelerator:
    """The run's Accelerator, refusing launches and precisions that cannot work before any work starts."""
    precision = cfg.train.mixed_precision or os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision: fp16 needs a GPU; use bf16 or no on the CPU")
    log_with = cfg.train.log_with
    if log_with == "auto":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            log_with = "none"
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        log_with=None if log_with == "none" else log_with,
        project_config=ProjectConfiguration(
            project_dir=cfg.train.output_dir,
            automatic_checkpoint_naming=True,
            total_limit=cfg.train.keep_checkpoints,
        ),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(
            f"launched {launched} processes but accelerate runs {accelerator.num_processes} "
            f"(distributed type {accelerator.distributed_type}): a multi-GPU launch needs GPUs; "
            "for a multi-process CPU run set ACCELERATE_USE_CPU=1"
        )
    world = accelerator.num_processes
    if cfg.data.batch_size % (2 * world):
        raise ConfigError(
            f"data.batch_size: {cfg.data.batch_size} must be divisible by 2 x {world} processes "
            "(each process holds equal source and target halves)"
        )
    return accelerator


def log_batch_layout(cfg: ExperimentConfig, accelerator: Accelerator, steps_per_epoch: int) -> dict:
    """Log the derived batch arithmetic (BN statistics depend on it) and warn when it departs from the recipe."""
    world = accelerator.num_processes
    per_process = cfg.data.batch_size // world
    two_domains = cfg.data.target is not None and cfg.objective.target_branch
    half = per_process // 2 if two_domains else per_process
    layout = {
        "world_size": world,
        "global_batch": cfg.data.batch_size,
        "per_process_batch": per_process,
        "per_process_source": half,
        "per_process_target": per_process - half if two_domains else 0,
        "sync_bn": cfg.model.sync_bn,
        "mixed_precision": accelerator.mixed_precision,
        "steps_per_epoch": steps_per_epoch,
    }
    bn_sees = cfg.data.batch_size if cfg.model.sync_bn else per_process
    logger.info(
        "batch: %d processes x (%d source + %d target) = %d images per step; each BatchNorm sees %d; %d steps/epoch",
        world,
        layout["per_process_source"],
        layout["per_process_target"],
        cfg.data.batch_size,
        bn_sees,
        steps_per_epoch,
    )
    published = cfg.train.published_per_process_batch
    if published is not None and bn_sees != published:
        logger.warning(
            "BatchNorm statistics over %d images instead of the published %d per process (%d + %d); "
            "results may differ from the paper. Use %d processes, or data.batch_size=%d",
            bn_sees,
            published,
            published // 2,
            published // 2,
            cfg.data.batch_size // published,
            published * world,
        )
    return layout


def load_domain(domain: DomainConfig, accelerator: Accelerator):
    """Parse (or read from cache) one benchmark; the main process builds the cache, the others then read it."""
    with accelerator.main_process_first():
        return load_benchmark(domain.name, domain.resolved_root(), **domain.options)


def build_optimizer(network: CrossDomainNetwork, cfg: ExperimentConfig) -> torch.optim.SGD:
    """SGD with the pretrained backbone at `lr_backbone` and the new layers (BNNeck, classifier) at `lr_new`."""
    backbone = [p for p in network.encoder.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in backbone}
    new = [p for p in network.parameters() if p.requires_grad and id(p) not in backbone_ids]
    return torch.optim.SGD(
        [
            {"params": backbone, "lr": cfg.optim.lr_backbone, "initial_lr": cfg.optim.lr_backbone},
            {"params": new, "lr": cfg.optim.lr_new, "initial_lr": cfg.optim.lr_new},
        ],
        momentum=cfg.optim.momentum,
        weight_decay=cfg.optim.weight_decay,
    )


def build_objective(cfg: ExperimentConfig, *, with_target: bool) -> CAILObjective:
    o = cfg.objective
    return CAILObjective(
        target_branch=with_target,
        neighbor_mode=o.neighbor_mode,
        scale=o.scale,
        eps=o.neighbor_eps,
        intra_start_epoch=o.intra_start_epoch,
        intra_weight=o.intra_weight,
        inter_start_epoch=o.inter_start_epoch,
        inter_weight=o.inter_weight,
        agnostic_weight=o.agnostic_weight,
        mixup=o.mixup,
        mixup_start_epoch=o.mixup_start_epoch,
    )


def mixup_lambda(
    cfg: ExperimentConfig, accelerator: Accelerator, objective: CAILObjective, epoch: int, step: int
) -> float | None:
    """The step's mixup coefficient, or None when mixup is off this epoch.

    Drawn from a generator seeded by (seed, epoch, step) - and the rank when `mixup_lambda_per: process` - so
    every process agrees on the global lambda without communication and a resumed run draws the same values.
    """
    if not objective.mixup_active(epoch):
        return None
    rank = accelerator.process_index if cfg.objective.mixup_lambda_per == "process" else 0
    generator = seeded_generator("mixup", cfg.train.seed, epoch, step, rank)
    return sample_mixup_lambda(cfg.objective.mixup_alpha, generator=generator)


@contextmanager
def stop_on_signals(accelerator: Accelerator) -> Iterator[dict]:
    """Turn SIGINT/SIGTERM into a trigger checked after each step, so the step finishes and a checkpoint is saved."""
    received: dict[str, int] = {}

    def handler(signum, frame):
        received.setdefault("signum", signum)
        accelerator.set_trigger()
        logger.warning("received %s: stopping after the current step", signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def train(cfg: ExperimentConfig) -> TrainResult:
    """Train on `cfg`, evaluating on the target every `eval_interval` epochs, and export the encoder.

    Returns:
        The output folder, the list of evaluations and the exported model folder.
    """
    output_dir = Path(cfg.train.output_dir)
    if cfg.train.resume == "no" and checkpoint_dirs(output_dir):
        raise ConfigError(
            f"{output_dir}: already holds checkpoints; resume with --resume (train.resume=auto) "
            "or choose another --output-dir"
        )
    accelerator = build_accelerator(cfg)
    set_seed(cfg.train.seed, deterministic=cfg.train.deterministic)
    with_target = cfg.data.target is not None and cfg.objective.target_branch

    source = load_domain(cfg.data.source, accelerator)
    target = load_domain(cfg.data.target, accelerator) if with_target else None
    evaluation = load_domain(cfg.eval_domain, accelerator)

    encoder = ReIDEncoder(
        cfg.model.backbone,
        pretrained=cfg.model.pretrained,
        pretrained_path=cfg.model.pretrained_path,
        last_stride=cfg.model.last_stride,
        input_size=[cfg.data.height, cfg.data.width],
    )
    d = cfg.data
    augmentation = BatchAugmentation(
        mean=encoder.mean, std=encoder.std, pad=d.pad, flip_prob=d.flip_prob, erasing_prob=d.erasing_prob
    )
    test_transform = build_transform(d.height, d.width, mean=encoder.mean, std=encoder.std)
    load_transform = build_transform(d.height, d.width, normalize=False)  # uint8; augmented per batch on device
    train_set = CrossDomainDataset(source["train"], target["train"] if with_target else None, load_transform)
    per_process = d.batch_size // accelerator.num_processes
    # The sampler shards by rank itself, so the train loader is not passed through `accelerator.prepare`.
    sampler = CrossDomainBatchSampler(
        len(train_set.source),
        len(train_set.target) if with_target else 0,
        per_process,
        num_replicas=accelerator.num_processes,
        rank=accelerator.process_index,
        seed=cfg.train.seed,
    )
    loader_kwargs = {"num_workers": d.num_workers, "pin_memory": accelerator.device.type == "cuda"}
    train_loader = DataLoader(train_set, batch_sampler=sampler, persistent_workers=d.num_workers > 0, **loader_kwargs)
    query_loader, gallery_loader = (
        DataLoader(ReIDImageDataset(evaluation[split], test_transform), batch_size=d.eval_batch_size, **loader_kwargs)
        for split in ("query", "gallery")
    )

    network = CrossDomainNetwork(encoder, train_set.num_source_classes)
    if cfg.model.sync_bn and accelerator.num_processes > 1:
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    if cfg.model.channels_last:
        network = network.to(memory_format=torch.channels_last)
    memory = (
        ExemplarMemory(len(train_set.target), encoder.feature_dim, train_set.target_camids) if with_target else None
    )
    optimizer = build_optimizer(network, cfg)
    network, optimizer, query_loader, gallery_loader = accelerator.prepare(
        network, optimizer, query_loader, gallery_loader
    )
    if memory is not None:
        memory.to(accelerator.device)
    forward = torch.compile(network) if cfg.model.compile else network
    objective = build_objective(cfg, with_target=with_target)

    layout = log_batch_layout(cfg, accelerator, sampler.steps_per_epoch(2))
    config_yaml = dump_config(cfg)
    recorder = RunRecorder(output_dir, config=cfg.to_dict(), run_info={**layout, **environment_info()})
    state = TrainState()
    if cfg.train.resume == "auto":
        state = load_latest_checkpoint(accelerator, memory, output_dir)
    if accelerator.is_main_process:
        recorder.start(resumed=state.global_step > 0, config_yaml=config_yaml)
    accelerator.init_trackers("reid-accel", config=recorder.flat_config())

    with stop_on_signals(accelerator) as received:
        while state.epoch <= cfg.optim.epochs:
            epoch = state.epoch
            factor = learning_rate_factor(epoch, milestones=cfg.optim.milestones, gamma=cfg.optim.gamma)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            sampler.set_epoch(epoch, start_step=state.step_in_epoch)
            steps = sampler.steps_per_epoch(epoch)
            momentum = memory_momentum(epoch, momentum=cfg.objective.memory_momentum)
            sums: dict[str, float] = defaultdict(float)
            progress = tqdm(
                train_loader,
                desc=f"epoch {epoch}/{cfg.optim.epochs}",
                initial=state.step_in_epoch,
                total=steps,
                disable=not accelerator.is_local_main_process,
            )
            network.train()
            started = time.perf_counter()
            done = 0
            for batch in progress:
                done += 1
                components = train_step(
                    cfg,
                    accelerator,
                    forward,
                    network,
                    optimizer,
                    objective,
                    memory,
                    augmentation,
                    batch,
                    epoch,
                    state,
                    momentum,
                )
                for name, value in components.items():
                    sums[name] += value
                progress.set_postfix(loss=f"{components['total']:.3f}", refresh=False)
                accelerator.log({f"train/{k}": v for k, v in components.items()}, step=state.global_step)
                state.advance(steps)
                if state.epoch == epoch and accelerator.check_trigger():
                    path = save_checkpoint(accelerator, state, memory, config_yaml)
                    raise TrainingInterrupted(received.get("signum", signal.SIGTERM), path)
            averages = {k: v / max(done, 1) for k, v in sums.items()}
            images_per_s = done * d.batch_size / (time.perf_counter() - started)
            logger.info(
                "epoch %d: %s, lr %.4g, %.0f img/s",
                epoch,
                ", ".join(f"{k} {v:.4f}" for k, v in averages.items()),
                optimizer.param_groups[0]["lr"],
                images_per_s,
            )
            if accelerator.is_main_process:
                recorder.record_epoch(epoch, averages)

            if epoch % cfg.train.eval_interval == 0 or epoch == cfg.optim.epochs:
                metrics, _, _ = evaluate_retrieval(
                    accelerator.unwrap_model(network).encoder, query_loader, gallery_loader, accelerator
                )
                logger.info(
                    "epoch %d: %s mAP %.1f%%, rank-1 %.1f%%, rank-5 %.1f%%, rank-10 %.1f%% (%d queries)",
                    epoch,
                    cfg.eval_domain.name,
                    100 * metrics["mAP"],
                    100 * metrics["rank1"],
                    100 * metrics["rank5"],
                    100 * metrics["rank10"],
                    metrics["num_valid_queries"],
                )
                accelerator.log({f"eval/{k}": metrics[k] for k in ("mAP", "rank1", "rank5", "rank10")}, step=epoch)
                if accelerator.is_main_process:
                    recorder.record_evaluation(epoch, metrics)
            if epoch % cfg.train.checkpoint_interval == 0 or epoch == cfg.optim.epochs:
                save_checkpoint(accelerator, state, memory, config_yaml)
            if accelerator.check_trigger():
                path = save_checkpoint(accelerator, state, memory, config_yaml)
                raise TrainingInterrupted(received.get("signum", signal.SIGTERM), path)

    model_dir = output_dir / "model"
    if accelerator.is_main_process:
        accelerator.unwrap_model(network).encoder.save_pretrained(model_dir)
        recorder.finish()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(output_dir, recorder.evaluations, model_dir)


def train_step(
    cfg: ExperimentConfig,
    accelerator: Accelerator,
    forward: torch.nn.Module,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    objective: CAILObjective,
    memory: ExemplarMemory | None,
    augmentation: BatchAugmentation,
    batch: dict[str, torch.Tensor],
    epoch: int,
    state: TrainState,
    momentum: float,
) -> dict[str, float]:
    """One optimisation step on a [source | target] batch; returns the loss components as floats."""
    batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
    # Random flips, crops and erasing drawn per step: the same on a resumed run, whatever the loader workers.
    generator = seeded_generator(
        "augment", cfg.train.seed, epoch, state.step_in_epoch, accelerator.process_index, device=accelerator.device
    )
    pixel_values = augmentation(batch["pixel_values"], generator)
    if cfg.model.channels_last:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    num_source = pixel_values.shape[0] // 2 if memory is not None else pixel_values.shape[0]
    lam = mixup_lambda(cfg, accelerator, objective, epoch, state.step_in_epoch)
    if lam is not None:
        pixel_values = mix_pixels(pixel_values, num_source=num_source, lam=lam)
    with accelerator.autocast():
        outputs = forward(pixel_values, num_source=num_source, source_neck="batch" if memory is not None else "train")
    target = {}
    if memory is not None:
        target = {
            "target_features": outputs["target_features"],
            "target_camids": batch["camid"][num_source:],
            "target_slots": batch["index"][num_source:],
            "memory_features": memory.features,
            "memory_camids": memory.camids,
        }
    loss, components = objective(
        epoch=epoch,
        source_features=outputs["source_features"],
        source_logits=outputs["source_logits"],
        source_labels=batch["pid"][:num_source],
        classifier_weight=accelerator.unwrap_model(network).classifier.weight,
        lam=lam,
        **target,
    )
    if not torch.isfinite(loss):
        values = {k: float(v) for k, v in components.items()}
        raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {state.step_in_epoch}: {values}")
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    optimizer.step()
    if memory is not None:
        memory.update(outputs["target_features"].detach(), target["target_slots"], momentum)
    return {k: float(v) for k, v in components.items()}
