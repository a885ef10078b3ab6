"""Scale-out: ``torchrun`` ranks, TorchRec ``DistributedModelParallel`` embedding sharding, Kafka partitions per rank.

    torchrun --nproc-per-node 2 -m trainer --distributed --bootstrap 127.0.0.1:9092

* Each rank reads the samples partitions ``p % WORLD_SIZE == RANK`` (``SourceConfig.rank/world_size``) with its own
  offsets in its own checkpoint (``<checkpoint dir>/rank<r>/``).
* The Ranker's ``EmbeddingBagCollection`` tables are sharded by TorchRec DMP (table-wise by default; column-wise
  also works on CPU/gloo). Row-wise Adagrad is fused into the FBGEMM table-batched backward
  (``EXACT_ROWWISE_ADAGRAD``); the dense part is replicated with DDP and trained by AdamW as on one rank.
* Ranks step in lockstep (DMP's all-to-all and DDP's all-reduce are collectives): every iteration one small
  all-reduce agrees on (anyone has a batch, stop, snapshot, checkpoint). A rank whose partitions are momentarily
  empty trains on an empty batch, so nobody waits on it.
* Checkpoints are per rank and hold only the rank's own shards (``ShardedTensor`` → its local tensor), so they stay
  ``weights_only``-loadable; all ranks checkpoint at the same step and resume from the newest step they all have.
  Snapshots gather the full tables to rank 0, which writes an ordinary (unsharded) Ranker snapshot.

Limitations found (torch 2.14 / torchrec 1.9.2 / fbgemm-gpu-cpu 1.9.0, CPU + gloo): the planner offers no row-wise
(or table-row-wise) sharding on a CPU compute device ("No available sharding type and compute kernel combination",
torchrec #1252); table-wise and column-wise work. DDP averages gradients over ranks including empty ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model import Ranker
from model.batch import Batch
from model.cowatch import CoWatch
from model.features import FeatureSpec

log = logging.getLogger(__name__)
_FUSED = "__fused_optim__."


class Collective:
    """The per-iteration agreement of lockstep ranks (one all-reduce of a few flags)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank, self.world_size = rank, world_size

    def sync(self, has_batch: bool, hard_stop: bool, soft_stop: bool, snapshot_due: bool,
             checkpoint_due: bool) -> tuple[bool, bool, bool, bool]:
        """→ (anyone has a batch, stop now, snapshot now, checkpoint now)."""
        t = torch.tensor([has_batch, hard_stop, soft_stop, snapshot_due, checkpoint_due], dtype=torch.int64)
        dist.all_reduce(t)  # SUM
        any_batch, hard, soft, snap, ckpt = (int(x) for x in t)
        return any_batch > 0, hard > 0 or soft == self.world_size, snap > 0, ckpt > 0

    def agree_min(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t)


def _local(v: Any) -> torch.Tensor | None:
    """A ShardedTensor's local shard (whole table under table-wise sharding), a tensor as is, None if no shard."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    if isinstance(v, ShardedTensor):
        shards = v.local_shards()
        return shards[0].tensor.detach().cpu().clone() if shards else None
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    return None


def _copy_into(dst: Any, src: torch.Tensor) -> None:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    with torch.no_grad():
        if isinstance(dst, ShardedTensor):
            dst.local_shards()[0].tensor.copy_(src)
        else:
            dst.copy_(src)


class ShardedRanker(nn.Module):
    """A DMP-sharded :class:`Ranker` with the trainer's model interface.

    ``embedding_parameters()`` is empty (their row-wise Adagrad runs fused in the backward), ``dense_parameters()``
    are the DDP-replicated rest. ``state_dict()`` is this rank's *local* view (own shards + fused optimizer state);
    :meth:`full_state_dict` gathers an ordinary Ranker state dict on rank 0 (collective).
    """

    def __init__(self, dmp: nn.Module, spec: FeatureSpec, template: Ranker) -> None:
        super().__init__()
        self.dmp = dmp
        self.spec, self.config = spec, template.config
        self.sample_spec = template.sample_spec  # recorded into the snapshots to_ranker builds
        self._shapes = {k: tuple(v.shape) for k, v in template.state_dict().items()}

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.dmp(batch)  # type: ignore[no-any-return]

    def embedding_parameters(self) -> list[nn.Parameter]:
        return []

    def observe(self, batch: Batch) -> None:
        """Add this rank's batch to its co-watch sketches (:class:`CoWatch` and its signed subclass ``CoLike``, each
        observed once). Ranks keep their own sketches (no collective: cosine similarities are scale-free, so a sketch
        of some users' streams estimates the same ones); the snapshot is rank 0's."""
        for m in self.dmp.modules():
            if isinstance(m, CoWatch):
                m.observe(batch)

    def dense_parameters(self) -> list[nn.Parameter]:
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        return [p for _, p in in_backward_optimizer_filter(self.dmp.named_parameters())]

    def _fused(self) -> Any:
        return self.dmp.fused_optimizer  # type: ignore[union-attr]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        out: dict[str, Any] = {}
        for k, v in self.dmp.state_dict().items():
            t = _local(v)
            if t is not None:
                out[k] = t
        for param_key, st in self._fused().state_dict()["state"].items():
            for name, v in st.items():
                t = _local(v)
                if t is not None:
                    out[f"{_FUSED}{param_key}\x1f{name}"] = t
        return out

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:  # type: ignore[override]
        own = self.dmp.state_dict()
        fused = self._fused().state_dict()["state"]
        for k, v in state.items():
            if k.startswith(_FUSED):
                param_key, name = k[len(_FUSED):].split("\x1f", 1)
                _copy_into(fused[param_key][name], v)
            elif k in own:
                _copy_into(own[k], v)
            elif strict:
                raise RuntimeError(f"unexpected key in sharded checkpoint: {k}")
        return None

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Every tensor unsharded, on rank 0 (None elsewhere). All ranks must call it."""
        from torch.distributed._shard.sharded_tensor import ShardedTensor

        out: dict[str, torch.Tensor] = {}
        rank = dist.get_rank()
        for k, v in self.dmp.state_dict().items():
            if isinstance(v, ShardedTensor):
                full = torch.empty(self._shapes[k], dtype=v.dtype) if rank == 0 else None
                v.gather(dst=0, out=full)
                if full is not None:
                    out[k] = full
            elif isinstance(v, torch.Tensor):
                out[k] = v.detach().cpu()
        return out if rank == 0 else None

    def to_ranker(self) -> Ranker | None:
        """An ordinary Ranker with the gathered weights on rank 0 (None elsewhere). Collective."""
        full = self.full_state_dict()
        if full is None:
            return None
        model = Ranker(self.spec, self.config)
        model.load_state_dict(full, strict=True)
        model.sample_spec = self.sample_spec
        return model


def shard_ranker(model: Ranker, spec: FeatureSpec, world_size: int, embedding_lr: float,
                 sharding: str = "table_wise") -> ShardedRanker:
    """Wrap ``model`` in TorchRec DMP with every table sharded ``sharding``-wise and fused row-wise Adagrad."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    constraints = {f"t_{f}": ParameterConstraints(sharding_types=[sharding]) for f in spec.tables}
    sharders = [EmbeddingBagCollectionSharder(fused_params={
        "optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": embedding_lr})]
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device=device.type),
                                       constraints=constraints)
    assert dist.GroupMember.WORLD is not None
    plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)  # type: ignore[arg-type]
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)  # type: ignore[arg-type]
    return ShardedRanker(dmp, spec, model)


def run_distributed(args: argparse.Namespace, spec_fn: Callable[[argparse.Namespace], FeatureSpec],
                    model_fn: Callable[[argparse.Namespace, FeatureSpec], Any],
                    config_fn: Callable[..., Any]) -> int:
    """Entry point of ``python -m trainer --distributed`` under torchrun (RANK, WORLD_SIZE, MASTER_ADDR set)."""
    from trainer.loop import Trainer

    if "RANK" not in os.environ:
        raise SystemExit("--distributed needs torchrun (RANK/WORLD_SIZE/MASTER_ADDR are not set)")
    if args.model != "ranker":
        raise SystemExit("--distributed shards the Ranker only (--model ranker)")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        spec = spec_fn(args)
        model = model_fn(args, spec)  # same seed on every rank: identical dense init
        sharded = shard_ranker(model, spec, world, args.embedding_lr, args.sharding)
        config = config_fn(args, rank=rank, world_size=world)
        trainer = Trainer(config, sharded, spec, None, Collective(rank, world))
        if args.metrics_port:
            from prometheus_client import start_http_server

            start_http_server(args.metrics_port + rank, addr=args.metrics_host)
        signal.signal(signal.SIGTERM, lambda *_: trainer.stop_event.set())
        signal.signal(signal.SIGINT, lambda *_: trainer.stop_event.set())
        log.info("rank %d/%d (%s), partitions p %% %d == %d%s", rank, world, backend, world, rank,
                 f", resumed from {trainer.resumed_from}" if trainer.resumed_from else "")
        summary = trainer.run(max_samples=args.max_samples, max_seconds=args.max_seconds,
                              exit_when_idle_s=args.exit_when_idle)
        log.info("rank %d stopped: %s", rank, summary)
        # no rank tears its process group down while another is still in the last collective (a gloo pair closed
        # under a pending op aborts that rank: "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0
