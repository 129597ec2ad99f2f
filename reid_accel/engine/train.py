"""The training loop under accelerate, for any method of `reid_accel.methods` (`method.name`).

One process::

    reid-accel train configs/duke2market.yaml --output-dir runs/duke2market

Several GPUs or machines (the launcher starts one process per GPU; the recipe, not the launch, fixes the batch)::

    accelerate launch --config_file accelerate_config.yaml -m reid_accel.train configs/duke2market.yaml

`setup` builds everything once, in the order of accelerate's examples: Accelerator -> batch layout -> seed ->
encoder -> data -> the method's training set, sampler, network and state -> optimizer -> prepare -> resume.
`train_step` is one optimizer step: every BatchNorm group of the process's share runs one forward, the method's loss
is computed against its state as it was before the step, gradients of the groups are averaged, the optimizer
steps, and only then does the method update its state from the whole step, identically on every process. `train`
is the loop around it; before each epoch the method's hook runs (e.g. re-clustering).
"""

import logging
import math
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, set_seed
from torch.profiler import record_function
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from reid_accel.card import TrainingRecord
from reid_accel.config import DomainConfig, ExperimentConfig, dump_config
from reid_accel.data import BatchAugmentation, ReIDImageDataset, build_transform, load_benchmark
from reid_accel.data.benchmarks import check_domain
from reid_accel.engine.distributed import (
    ProcessTable,
    convert_to_sync_groups,
    reporting_lost_processes,
    share_main_process_buffers,
)
from reid_accel.engine.evaluate import evaluate_retrieval, extract_embeddings
from reid_accel.engine.report import RunRecorder, environment_info
from reid_accel.engine.state import TrainState, encoder_arguments, load_latest_checkpoint, save_checkpoint
from reid_accel.errors import ConfigError, ReidAccelError
from reid_accel.folders import CheckpointFolder, RunFolder
from reid_accel.hub import from_pretrained, save_pretrained
from reid_accel.layout import BatchLayout
from reid_accel.methods import METHODS, BuildInputs, Method, is_diagnostic
from reid_accel.modeling import ReIDEncoder
from reid_accel.modeling.batchnorm import running_stats_frozen
from reid_accel.objectives import learning_rate_factor
from reid_accel.seeding import seeded_generator

logger = logging.getLogger(__name__)


class LossNotFinite(ReidAccelError, FloatingPointError):
    """A loss became NaN or infinite: the run diverged (learning rates too high, or broken data)."""


class TrainingInterrupted(RuntimeError):
    """Raised after a SIGINT/SIGTERM once the current step finished and a checkpoint was written."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}; checkpoint saved to {checkpoint}")
        self.signum = signum


@dataclass
class TrainResult:
    """What `train` leaves: the run folder (its model folder inside) and the evaluations, oldest first."""

    run: RunFolder
    evaluations: list[dict]

    @property
    def output_dir(self) -> Path:
        return self.run.root

    @property
    def model_dir(self) -> Path:
        return self.run.model.root


@dataclass
class Run:
    """Everything a training run builds once. `train_step` reads it; the loop advances `state`."""

    cfg: ExperimentConfig
    accelerator: Accelerator
    layout: BatchLayout
    network: torch.nn.Module  # prepared: wrapped for data parallelism when several processes run
    forward: torch.nn.Module  # `network`, compiled when `model.compile` asks
    optimizer: torch.optim.Optimizer
    method: Method
    state_module: torch.nn.Module | None  # the method's state, carried by checkpoints
    augmentation: BatchAugmentation
    sampler: torch.utils.data.Sampler  # the method's rank-aware batch sampler
    train_loader: DataLoader
    embed_transform: object  # the test transform, for the method's embeddings of its training images
    query_loader: DataLoader
    gallery_loader: DataLoader
    positions: torch.Tensor  # (P,) global positions of this process's images in a step
    processes: ProcessTable
    state: TrainState

    @property
    def finished(self) -> bool:
        """All epochs done, or `train.max_steps` optimizer steps."""
        max_steps = self.cfg.train.max_steps
        return self.state.epoch > self.cfg.optim.epochs or (
            max_steps is not None and self.state.global_step >= max_steps
        )

    @property
    def encoder(self) -> ReIDEncoder:
        return self.accelerator.unwrap_model(self.network).encoder


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
            save_on_each_node=cfg.train.save_on_each_node,
        ),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.collective_timeout_s))],
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(
            f"launched {launched} processes but accelerate runs {accelerator.num_processes} "
            f"(distributed type {accelerator.distributed_type}): a multi-GPU launch needs GPUs; "
            "for a multi-process CPU run set ACCELERATE_USE_CPU=1"
        )
    return accelerator


def load_domain(domain: DomainConfig, accelerator: Accelerator):
    """Parse (or read from cache) one benchmark: each machine's first process builds its local cache, then the rest
    of that machine reads it."""
    with accelerator.local_main_process_first():
        return load_benchmark(domain.name, domain.resolved_root(), **domain.options)


def build_optimizer(network: torch.nn.Module, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """`optim.optimizer` (SGD or Adam, weight decay as L2) with the pretrained backbone at `lr_backbone` and the new
    layers (BNNeck, classifier) at `lr_new`."""
    backbone = [p for p in network.encoder.backbone.parameters() if p.requires_grad]
    backbone_ids = {id(p) for p in backbone}
    new = [p for p in network.parameters() if p.requires_grad and id(p) not in backbone_ids]
    groups = [
        {"params": backbone, "lr": cfg.optim.lr_backbone, "initial_lr": cfg.optim.lr_backbone},
        {"params": new, "lr": cfg.optim.lr_new, "initial_lr": cfg.optim.lr_new},
    ]
    if cfg.optim.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=cfg.optim.weight_decay)
    return torch.optim.SGD(groups, momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay)


def build_encoder(cfg: ExperimentConfig) -> ReIDEncoder:
    """The encoder to train: a saved reid-accel model (`model.init_from`, loaded strictly) or a timm backbone."""
    if cfg.model.init_from is not None:
        try:
            return from_pretrained(cfg.model.init_from).train()
        except ReidAccelError as err:
            raise ConfigError(f"model.init_from: {cfg.model.init_from!r} is not a reid-accel model ({err})") from None
    return ReIDEncoder(**encoder_arguments(cfg))


def setup(cfg: ExperimentConfig) -> Run:
    """Build the run once: refuse what cannot work first, then data, model, optimizer and the resumed state."""
    run_folder = RunFolder(Path(cfg.train.output_dir))
    if cfg.train.resume == "no" and run_folder.checkpoints():
        raise ConfigError(
            f"{run_folder.root}: already holds checkpoints; resume with --resume (train.resume=auto) "
            "or choose another --output-dir"
        )
    method = METHODS[cfg.method.name](cfg)
    for key, domain in {**method.domains, "data.eval": cfg.data.eval}.items():
        if domain is not None:
            check_domain(domain, key, needs_cameras=method.camera_setting(key))
    accelerator = build_accelerator(cfg)
    layout = BatchLayout.plan(
        cfg.data.batch_size,
        accelerator.num_processes,
        bn_batch_size=cfg.data.bn_batch_size,
        two_domains=method.two_domains,
        sync_bn=accelerator.device.type == "cuda",
    )
    processes = ProcessTable.gather(accelerator)
    set_seed(cfg.train.seed, deterministic=cfg.train.deterministic)

    # The encoder before the data: a backbone that cannot be built, or ImageNet weights that cannot be fetched,
    # are reported before minutes of parsing. Each machine's first process fetches the weights into the cache.
    with accelerator.local_main_process_first():
        encoder = build_encoder(cfg)
    train_splits = {key: load_domain(domain, accelerator)["train"] for key, domain in method.domains.items()}
    evaluation = load_domain(cfg.eval_domain, accelerator)

    d = cfg.data
    augmentation = BatchAugmentation(
        mean=encoder.mean,
        std=encoder.std,
        pad=d.pad,
        flip_prob=d.flip_prob,
        erasing_prob=d.erasing_prob,
        erasing_ratio_rule=d.erasing_ratio_rule,
    )
    test_transform = build_transform(d.height, d.width, mean=encoder.mean, std=encoder.std)
    load_transform = build_transform(d.height, d.width, normalize=False)  # uint8; augmented per batch on device
    parts = method.build(
        BuildInputs(train_splits, layout, encoder, accelerator.process_index, load_transform, test_transform)
    )
    # The sampler shards by rank itself, so the train loader is not passed through `accelerator.prepare`.
    loader_kwargs = {"num_workers": d.num_workers, "pin_memory": accelerator.device.type == "cuda"}
    train_loader = DataLoader(
        parts.dataset, batch_sampler=parts.sampler, persistent_workers=d.num_workers > 0, **loader_kwargs
    )
    query_loader, gallery_loader = (
        DataLoader(ReIDImageDataset(evaluation[split], test_transform), batch_size=d.eval_batch_size, **loader_kwargs)
        for split in ("query", "gallery")
    )

    network = convert_to_sync_groups(parts.network, layout, accelerator.process_index)
    if cfg.model.channels_last:
        network = network.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(network, cfg)
    network, optimizer, query_loader, gallery_loader = accelerator.prepare(
        network, optimizer, query_loader, gallery_loader
    )
    method.to(accelerator.device)
    logger.info(layout.describe(parts.sampler.steady_steps_per_epoch))
    resume = cfg.train.resume == "auto"
    state = load_latest_checkpoint(accelerator, parts.state, run_folder) if resume else TrainState()
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        layout=layout,
        network=network,
        forward=torch.compile(network) if cfg.model.compile else network,
        optimizer=optimizer,
        method=method,
        state_module=parts.state,
        augmentation=augmentation,
        sampler=parts.sampler,
        train_loader=train_loader,
        embed_transform=test_transform,
        query_loader=query_loader,
        gallery_loader=gallery_loader,
        positions=layout.positions(accelerator.process_index),
        processes=processes,
        state=state,
    )


def augmentation_draws(run: Run, *, epoch: int, step: int) -> torch.Tensor:
    """(P, num_draws) uniforms for this process's images: the rows of the step's global draws at their positions.

    Drawn on the CPU, where `BatchAugmentation` turns them into crops and boxes, on any device.
    """
    generator = seeded_generator("augment", run.cfg.train.seed, epoch, step)
    draws = torch.rand(run.layout.global_batch, run.augmentation.num_draws, generator=generator)
    return draws[run.positions]


def train_step(run: Run, batch: dict[str, torch.Tensor], *, epoch: int, step: int) -> dict[str, torch.Tensor]:
    """One optimizer step on this process's share of the global batch; returns the loss components as tensors.

    The share is `layout.micro_batches` BN groups. Each runs its own forward and backward, scaled so the step's
    gradient is the mean of the groups' (as data parallelism averages over processes), with the gradient
    all-reduce held back until the last one. Only the first group updates BatchNorm running statistics, as data
    parallelism keeps the first process's buffers. The method updates its state once, after the optimizer step,
    from every group of every process.
    """
    accelerator, layout = run.accelerator, run.layout
    batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in batch.items()}
    with record_function("reid_accel.augmentation"):
        pixel_values = run.augmentation(batch["pixel_values"], augmentation_draws(run, epoch=epoch, step=step))
    if run.cfg.model.channels_last:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    size, count, method = layout.micro_batch, layout.micro_batches, run.method
    totals: dict[str, torch.Tensor] = {}
    carries = []
    for j in range(count):
        part = slice(j * size, (j + 1) * size)
        group = layout.group_index(accelerator.process_index, j)
        last = j == count - 1
        with (
            nullcontext() if last else accelerator.no_sync(run.network),
            nullcontext() if j == 0 else running_stats_frozen(run.network),
        ):
            where = {"epoch": epoch, "step": step, "group": group}
            group_batch = {k: v[part] for k, v in batch.items()}
            inputs, forward_kwargs = method.group_inputs(pixel_values[part], group_batch, **where)
            with accelerator.autocast(), record_function("reid_accel.forward"):
                outputs = run.forward(inputs, **forward_kwargs)
            with record_function("reid_accel.objective"):
                result = method.group_loss(outputs, group_batch, **where)
            with record_function("reid_accel.backward"):
                accelerator.backward(result.loss / count)
        for name, value in result.components.items():
            totals[name] = totals.get(name, 0) + value / count
        carries.append(result.carry)
    with record_function("reid_accel.optimizer"):
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    with record_function("reid_accel.state_update"):
        method.after_step(carries, batch, epoch=epoch, step=step)
    return totals


class LossMeter:
    """Sums loss components on the device, so the host syncs once per read instead of several times a step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, components: dict[str, torch.Tensor]) -> None:
        for name, value in components.items():
            self.sums[name] = self.sums.get(name, 0) + value.detach().float()
        self.count += 1

    def mean(self, accelerator: Accelerator, where: str) -> dict[str, float]:
        """The means since the last read, averaged over processes; a non-finite one names itself and `where`."""
        if not self.count:
            return {}
        names = list(self.sums)  # the same order on every process: the same code adds them
        stacked = accelerator.reduce(torch.stack([self.sums[n] for n in names]) / self.count, reduction="mean")
        means = dict(zip(names, stacked.tolist(), strict=True))
        self.sums, self.count = {}, 0
        bad = [n for n, v in means.items() if not math.isfinite(v)]
        if bad:
            raise LossNotFinite(
                f"non-finite loss {', '.join(bad)} {where}: {means}; lower the learning rates or check the data"
            )
        return means


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


def embed(run: Run, dataset: torch.utils.data.Dataset) -> torch.Tensor:
    """(N, D) unit features of `dataset` (test-transformed images) in its row order, identical on every process:
    each process embeds a shard with the encoder in eval mode, with the main process's BatchNorm statistics (data
    parallelism leaves each process its own), then they are gathered."""
    share_main_process_buffers(run.network)
    loader = DataLoader(dataset, batch_size=run.cfg.data.eval_batch_size, num_workers=run.cfg.data.num_workers)
    return extract_embeddings(
        run.encoder, run.accelerator.prepare(loader), run.accelerator, desc="embed train"
    ).features.to(run.accelerator.device)


def train_epoch(run: Run) -> tuple[LossMeter, dict[str, float], bool]:
    """The steps of the current epoch, from where `run.state` stands to the epoch's end, `max_steps` or a signal.

    Returns:
        The epoch's loss components, the method's diagnostics of the epoch, and whether a signal asked to stop
        (agreed by every process).
    """
    cfg, accelerator, state = run.cfg, run.accelerator, run.state
    epoch = state.epoch
    factor = learning_rate_factor(
        epoch,
        milestones=cfg.optim.milestones,
        gamma=cfg.optim.gamma,
        warmup_epochs=cfg.optim.warmup_epochs,
        warmup_factor=cfg.optim.warmup_factor,
    )
    for group in run.optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    diagnostics = run.method.before_epoch(epoch, start_step=state.step_in_epoch, embed=lambda data: embed(run, data))
    run.sampler.set_epoch(epoch, start_step=state.step_in_epoch)
    steps = run.sampler.steps_per_epoch(epoch)
    epoch_losses, recent = LossMeter(), LossMeter()
    run.network.train()
    started, done, interrupted = time.perf_counter(), 0, False
    with tqdm(
        desc=f"epoch {epoch}/{cfg.optim.epochs}",
        initial=state.step_in_epoch,
        total=steps,
        disable=not accelerator.is_local_main_process,
    ) as progress:
        for step, batch in enumerate(run.train_loader, start=state.step_in_epoch):
            components = train_step(run, batch, epoch=epoch, step=step)
            state.count_step()
            epoch_losses.add(components)
            recent.add(components)
            progress.update()
            done += 1
            if state.global_step % cfg.train.log_interval == 0 or state.step_in_epoch == steps or run.finished:
                losses = recent.mean(accelerator, f"before global step {state.global_step}")  # syncs with the host
                progress.set_postfix(loss=f"{losses['total']:.3f}", refresh=False)
                accelerator.log({f"train/{k}": v for k, v in losses.items()}, step=state.global_step)
            interrupted = accelerator.check_trigger()
            if interrupted or run.finished:
                break
    logger.info("epoch %d: %.0f img/s", epoch, done * cfg.data.batch_size / (time.perf_counter() - started))
    return epoch_losses, diagnostics, interrupted


def end_epoch(
    run: Run, recorder: RunRecorder, epoch: int, losses: LossMeter, diagnostics: dict[str, float], config_yaml: str
) -> CheckpointFolder | None:
    """Record the epoch's losses and diagnostics, then evaluate and save a checkpoint when due (always after the
    last step).

    Returns:
        The checkpoint saved, if one was due.
    """
    cfg, accelerator = run.cfg, run.accelerator
    averages = {**diagnostics, **losses.mean(accelerator, f"in epoch {epoch}")}
    logger.info(
        "epoch %d: %s, lr %.4g",
        epoch,
        ", ".join(f"{k} {v:.4f}" for k, v in averages.items() if not is_diagnostic(k)),
        run.optimizer.param_groups[0]["lr"],
    )
    for line in run.method.describe(epoch, averages):
        logger.info("epoch %d %s", epoch, line)
    if accelerator.is_main_process:
        recorder.record_epoch(epoch, averages)
    last = epoch == cfg.optim.epochs or run.finished
    if epoch % cfg.train.eval_interval == 0 or last:
        share_main_process_buffers(run.network)
        metrics, _, _ = evaluate_retrieval(run.encoder, run.query_loader, run.gallery_loader, accelerator)
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
        scores = {f"eval/{k}": metrics[k] for k in ("mAP", "rank1", "rank5", "rank10")}
        accelerator.log(scores, step=run.state.global_step)
        if accelerator.is_main_process:
            recorder.record_evaluation(epoch, metrics)
    if epoch % cfg.train.checkpoint_interval == 0 or last:
        return checkpoint(run, config_yaml)
    return None


def checkpoint(run: Run, config_yaml: str) -> CheckpointFolder:
    """Save the run where it stands: accelerate's state, the progress, the method's state, config and encoder."""
    return save_checkpoint(run.accelerator, run.state, run.state_module, config_yaml, run.encoder.export_config())


def train(cfg: ExperimentConfig) -> TrainResult:
    """Train on `cfg`, evaluating on the target every `eval_interval` epochs, and export the encoder with its card.

    Returns:
        The run folder and the list of evaluations.
    """
    run = setup(cfg)
    accelerator, state = run.accelerator, run.state
    folder, config_yaml = RunFolder(Path(cfg.train.output_dir)), dump_config(cfg)
    run_info = {
        **run.layout.record(),
        "steps_per_epoch": run.sampler.steady_steps_per_epoch,
        "mixed_precision": accelerator.mixed_precision,
        **environment_info(),
    }
    recorder = RunRecorder(folder, config=cfg.to_dict(), run_info=run_info)
    if accelerator.is_main_process:
        recorder.start(resumed=state.global_step > 0, config_yaml=config_yaml)
    accelerator.init_trackers("reid-accel", config=recorder.flat_config())
    lost = reporting_lost_processes(run.processes, timeout_s=cfg.train.collective_timeout_s)
    try:
        with stop_on_signals(accelerator) as received, lost:
            while not run.finished:
                epoch, saved = state.epoch, None
                losses, diagnostics, interrupted = train_epoch(run)
                epoch_done = state.step_in_epoch == run.sampler.steps_per_epoch(epoch)
                if epoch_done:
                    state.next_epoch()
                if epoch_done or run.finished:
                    saved = end_epoch(run, recorder, epoch, losses, diagnostics, config_yaml)
                if interrupted:
                    saved = saved or checkpoint(run, config_yaml)
                    raise TrainingInterrupted(received.get("signum", signal.SIGTERM), saved.root)
            if accelerator.is_main_process:
                training = TrainingRecord(cfg, tuple(recorder.evaluations), run_info)
                save_pretrained(run.encoder, folder.model.root, training=training)
                recorder.finish()
            accelerator.wait_for_everyone()
    finally:
        accelerator.end_training()
    return TrainResult(folder, recorder.evaluations)
