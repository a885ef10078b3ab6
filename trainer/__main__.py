"""``python -m trainer``: the continual trainer (samples topic → model → snapshots), every flag with help.

Examples::

    python -m trainer --bootstrap 127.0.0.1:9092                       # train forever, snapshot every 5 s
    python -m trainer --exit-when-idle 10 --snapshot-every-s 2          # drain what is there, then stop
    python -m trainer --preset laptop                                   # a named model shape (model/presets.py)
    torchrun --nproc-per-node 2 -m trainer --distributed                # 2 ranks (see trainer/distributed.py)
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from model import PRESETS, DLRMBaseline, DLRMConfig, Preset, Ranker
from model.features import FeatureSpec
from streaming import cli
from trainer.distill import DistillConfig, wrap_student
from trainer.loop import Trainer, TrainerConfig
from trainer.optim import OptimConfig
from trainer.progressive import ProgressiveConfig
from trainer.sample_spec import SampleSpecMismatch, check_sample_spec
from trainer.source import SourceConfig

DEFAULT_PRESET = "base"
_RUN_FIELDS = ("trained_log", "snapshot_every_s", "snapshot_every_samples", "snapshot_idle_s", "snapshot_keep",
               "checkpoint_every_s", "checkpoint_keep", "log_every_s")
_PROGRESSIVE_NAMES = {"window": "eval-window"}  # flag names that are not the field's
_DISTILL_NAMES = {f: "distill-" + f.replace("_", "-") for f in ("weight", "aux_head", "adapter", "aux_hidden",
                                                                  "adapter_lr")}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m trainer", description=(__doc__ or "").replace("``", "").replace("::\n", ":\n"),
                                 formatter_class=cli.HelpFormatter)
    # Flags that are one config field are generated from the dataclasses (streaming/cli.py: type, choices and
    # default from the field); the rest (computed or preset-dependent defaults, process settings) are written here.
    k = ap.add_argument_group("Kafka source and batching")
    cli.add_config_args(k, SourceConfig, exclude=("rank", "world_size"), help={
        "batch_samples": "user-level samples per training batch",
        "batch_timeout_s": "emit a partial batch this many seconds after its first sample",
        "dedupe_capacity": "recently trained sample ids remembered (and checkpointed) to skip replays"})
    cli.add_config_args(k, TrainerConfig, include=("snapshots_topic",),
                    help={"snapshots_topic": "announce each snapshot here as JSON; '' = don't announce"})
    k.add_argument("--sample-spec-wait-s", type=float, default=5.0,
                   help="at start, wait this long for the streaming worker's sample spec on TOPIC.spec and refuse "
                        "(exit code 2) a model that does not fit it (--max-history above its L, other tasks); "
                        "none by then: warn and train unchecked (default: %(default)s)")
    r = ap.add_argument_group("run directory, checkpoints and snapshots")
    cli.add_config_args(r, TrainerConfig, include=("run_dir",))
    r.add_argument("--snapshot-dir", type=Path, default=None, help="serving snapshots (default: RUN_DIR/snapshots)")
    r.add_argument("--checkpoint-dir", type=Path, default=None, help="resume checkpoints (default: RUN_DIR/checkpoints)")
    r.add_argument("--metrics-log", type=Path, default=None, help="JSONL metrics log (default: RUN_DIR/metrics.jsonl)")
    cli.add_config_args(r, TrainerConfig, include=_RUN_FIELDS, help={
        "trained_log": "append trained sample ids here, committed with each checkpoint (exactly-once audit; "
                       "None = off; with --distributed, RANK's file is DIR/rankRANK/NAME)",
        "snapshot_every_s": "snapshot cadence in seconds, 0 = off",
        "snapshot_every_samples": "also snapshot after this many newly trained samples, 0 = off",
        "snapshot_idle_s": "also snapshot as soon as the trainer has caught up with the topic, at most once per "
                           "this many seconds, 0 = off",
        "snapshot_keep": "snapshots kept", "checkpoint_keep": "checkpoints kept",
        "checkpoint_every_s": "checkpoint cadence between snapshots, 0 = only with snapshots",
        "log_every_s": "metrics JSONL line + Prometheus quality refresh cadence, seconds"})
    t = ap.add_argument_group("training")
    t.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                   help="named model shape (model/presets.py; the flags below override single fields): "
                        + "; ".join(f"{n} = {p.description}" for n, p in sorted(PRESETS.items()))
                        + " (default: %(default)s)")
    t.add_argument("--model", choices=["ranker", "dlrm"], default="ranker",
                   help="ranker = the multi-scenario HTA transformer; dlrm = the DLRM baseline on the preset's "
                        "feature spec (default: %(default)s)")
    t.add_argument("--d-model", type=int, default=None, help="ranker width (default: the preset's)")
    t.add_argument("--num-blocks", type=int, default=None, help="ranker blocks (default: the preset's)")
    t.add_argument("--target-layers", type=int, default=None, help="ranker target-only layers per block (default: the preset's)")
    t.add_argument("--cowatch", action="store_true",
                   help="ranker co-watch readout (a kNN over the history keyed by a co-occurrence sketch; pair it with "
                        "the worker's --skip-action skip) (default: the preset's)")
    t.add_argument("--mf-dim", type=int, default=None,
                   help="ranker user x item factorization logits width, 0 = off (default: the preset's)")
    t.add_argument("--dropout", type=float, default=None, help="ranker residual dropout (default: the preset's)")
    t.add_argument("--max-history", type=int, default=None, help="FeatureSpec.max_history (default: the preset's)")
    t.add_argument("--max-realtime", type=int, default=None, help="FeatureSpec.max_realtime (default: the preset's)")
    t.add_argument("--max-table-rows", type=int, default=None,
                   help="cap every embedding table at this many hash buckets, 0 = FeatureSpec's sizes "
                        "(default: the preset's)")
    cli.add_config_args(t, OptimConfig)
    cli.add_config_args(t, TrainerConfig, include=("device", "seed"),
                    help={"device": "auto = CUDA when available", "seed": "model init seed"})
    t.add_argument("--threads", type=int, default=0, help="torch intra-op threads, 0 = torch default (default: %(default)s)")
    e = ap.add_argument_group("progressive validation and metrics")
    cli.add_config_args(e, ProgressiveConfig, names=_PROGRESSIVE_NAMES,
                    help={"window": "targets per scenario×task in the windowed metrics"})
    e.add_argument("--metrics-host", default="127.0.0.1", help="Prometheus bind address (default: %(default)s)")
    e.add_argument("--metrics-port", type=int, default=9102, help="Prometheus port, 0 = off (default: %(default)s)")
    d = ap.add_argument_group("external distillation (teacher → student, trainer/distill.py)")
    cli.add_config_args(d, TrainerConfig, include=("teacher_scores_topic", "distill_from", "distill_wait_s",
                                                  "distill_buffer"), help={
        "teacher_scores_topic": "teacher: publish every trained batch's scores, made before training on it "
                                "(leak-free), as teacher records tagged with the snapshot version; '' = off",
        "distill_from": "student: join the teacher records of this topic by sample id and add the distillation "
                        "loss; '' = off",
        "distill_wait_s": "student: a batch waits this long for its teacher records; late or missing: labels only",
        "distill_buffer": "student: teacher records held for samples not yet trained (oldest evicted beyond)"})
    cli.add_config_args(d, DistillConfig, names=_DISTILL_NAMES, help={
        "weight": "student: weight w of the distillation loss next to the label loss",
        "aux_head": "student: learn the teacher through a separate aux head (off: through the main head)",
        "adapter": "student: map the teacher's scores through an affine logit adapter fitted to the labels"})
    x = ap.add_argument_group("stopping and scale-out")
    x.add_argument("--max-samples", type=int, default=None, help="stop after training this many samples")
    x.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds")
    x.add_argument("--exit-when-idle", type=float, default=None, help="stop after this many seconds without records")
    x.add_argument("--distributed", action="store_true",
                   help="multi-rank under torchrun: shard embeddings with TorchRec DMP, partitions p %% WORLD_SIZE == RANK")
    x.add_argument("--sharding", choices=["table_wise", "column_wise", "row_wise"], default="table_wise",
                   help="TorchRec sharding of every table with --distributed; row_wise is not offered on CPU (default: %(default)s)")
    x.add_argument("--log-level", default="INFO", help="Python logging level (default: %(default)s)")
    return ap


def preset_from_args(args: argparse.Namespace) -> Preset:
    """The ``--preset`` with the single-field flags applied (the name stays; the effective config is recorded)."""
    return PRESETS[args.preset].with_changes(
        max_history=args.max_history, max_realtime=args.max_realtime, max_table_rows=args.max_table_rows,
        d_model=args.d_model, num_blocks=args.num_blocks, target_layers=args.target_layers, dropout=args.dropout,
        cowatch=args.cowatch or None, mf_dim=args.mf_dim)


def _spec(args: argparse.Namespace) -> FeatureSpec:
    return preset_from_args(args).feature_spec()


def _model(args: argparse.Namespace, spec: FeatureSpec) -> Ranker | DLRMBaseline:
    import torch

    torch.manual_seed(args.seed)
    if args.model == "dlrm":  # the baseline's own default config (the preset's Ranker fields don't apply)
        return DLRMBaseline(spec, DLRMConfig())
    return Ranker(spec, preset_from_args(args).ranker)


def config_from_args(args: argparse.Namespace, rank: int = 0, world_size: int = 1) -> TrainerConfig:
    """The frozen :class:`TrainerConfig` of parsed flags."""
    source = cli.config_from_args(SourceConfig, args, rank=rank, world_size=world_size)
    # Ranks share the snapshot directory (rank 0 writes); each keeps its own checkpoints, offsets and logs.
    per_rank = (lambda p: p) if world_size == 1 else (lambda p: p / f"rank{rank}")
    snapshot_dir = args.snapshot_dir if world_size == 1 else (args.snapshot_dir or args.run_dir / "snapshots")
    checkpoint_dir = per_rank(args.checkpoint_dir) if args.checkpoint_dir else None
    trained_log = per_rank(args.trained_log.parent) / args.trained_log.name if args.trained_log else None
    return cli.config_from_args(
        TrainerConfig, args, source=source, optim=cli.config_from_args(OptimConfig, args),
        progressive=cli.config_from_args(ProgressiveConfig, args, names=_PROGRESSIVE_NAMES),
        distill=cli.config_from_args(DistillConfig, args, names=_DISTILL_NAMES),
        run_dir=per_rank(args.run_dir), snapshot_dir=snapshot_dir, checkpoint_dir=checkpoint_dir,
        metrics_log=per_rank(args.metrics_log.parent) / args.metrics_log.name if args.metrics_log else None,
        trained_log=trained_log)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("trainer")
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    spec = _spec(args)
    try:  # the worker's sample spec, recorded into every snapshot (None: none published)
        sample_spec = check_sample_spec(args.bootstrap, args.topic, spec, args.sample_spec_wait_s)
    except SampleSpecMismatch as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def model_fn(a: argparse.Namespace, s: FeatureSpec) -> Ranker | DLRMBaseline:
        m = _model(a, s)
        if isinstance(m, Ranker) and sample_spec is not None:
            m.sample_spec = sample_spec.to_json()
        return m

    if args.distributed:
        if args.teacher_scores_topic or args.distill_from:
            print("error: --teacher-scores-topic / --distill-from run on one process (not --distributed)",
                  file=sys.stderr)
            return 2
        if args.ema_decay:
            print("error: --ema-decay runs on one process (not --distributed: averaging replicated DDP weights "
                  "is untested)", file=sys.stderr)
            return 2
        from trainer.distributed import run_distributed

        return run_distributed(args, _spec, model_fn, config_from_args)
    config = config_from_args(args)
    model = model_fn(args, spec)
    # a student's aux head and adapter sit next to its model; snapshots hold the model alone
    trainer = Trainer(config, wrap_student(model, config.distill) if config.distill_from else model, spec)
    if args.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(args.metrics_port, addr=args.metrics_host)
        except OSError as e:
            log.error("cannot serve metrics on %s:%d (%s); pick another --metrics-port or 0 to disable",
                      args.metrics_host, args.metrics_port, e)
            return 2
    signal.signal(signal.SIGTERM, lambda *_: trainer.stop_event.set())
    signal.signal(signal.SIGINT, lambda *_: trainer.stop_event.set())
    log.info("trainer pid %d on %s, run dir %s%s", os.getpid(), trainer.device, config.run_dir,
             f", resumed from {trainer.resumed_from}" if trainer.resumed_from else "")
    summary = trainer.run(max_samples=args.max_samples, max_seconds=args.max_seconds,
                          exit_when_idle_s=args.exit_when_idle)
    log.info("stopped: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
