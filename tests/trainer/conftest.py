"""Shared helpers for trainer tests: small valid samples built directly from the contract, Kafka produce."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry

from model import Ranker, RankerConfig
from model.features import FeatureSpec, TableSpec
from streaming.sample import Behavior, Sample, Target, make_sample_id
from trainer.loop import Trainer, TrainerConfig
from trainer.optim import OptimConfig

SCENARIOS = ("home", "search", "detail")


def make_samples(n: int, seed: int = 0, users: int = 12, start: int = 0) -> list[Sample]:
    """``n`` valid user-level samples with 1-4 targets, a short history and labels correlated with features."""
    rng = random.Random(seed)
    out: list[Sample] = []
    for i in range(start, start + n):
        u = f"u{rng.randrange(users)}"
        t0 = 1_700_000_000.0 + i * 10.0
        hist = [Behavior(f"i{rng.randrange(30)}", rng.choice(SCENARIOS), "click", t0 - 100 + j, {"cat": f"c{j % 3}"})
                for j in range(rng.randrange(0, 4))]
        targets = []
        for j in range(rng.randrange(1, 5)):
            item = rng.randrange(30)
            click = int(rng.random() < (0.8 if item % 2 == 0 else 0.15))
            targets.append(Target(
                event_id=f"e{i}-{j}", request_id=f"r{i}", item_id=f"i{item}", scenario=rng.choice(SCENARIOS),
                ts=t0 + j, position=j, item={"cat": f"c{item % 3}"}, context={"dev": "web"},
                dense={"price": float(item)}, labels={"click": click, "conversion": int(click and rng.random() < 0.3)},
            ))
        out.append(Sample(sample_id=make_sample_id(t.event_id for t in targets), user_id=u, targets=targets,
                          user={"age": str(rng.randrange(5))}, history=hist, span_start=targets[0].ts,
                          span_end=targets[-1].ts, max_event_ts=targets[-1].ts + 1.0))
    return out


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes] | None = None,
            partitions: int = 1) -> None:
    """Create ``topic`` with ``partitions`` (if new) and produce ``values`` in order."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        if topic not in admin.list_topics():
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for i, v in enumerate(values):
        producer.send(topic, key=keys[i] if keys else None, value=v)
    producer.flush(timeout=30)
    producer.close()


@pytest.fixture
def samples_factory():
    return make_samples


def tiny_ranker_trainer(run_dir: Path, optim: OptimConfig) -> Trainer:
    """A Trainer (no Kafka, private registry) of a seeded d=16 Ranker on tables capped at 512 rows."""
    base = FeatureSpec()
    spec = dataclasses.replace(base, tables={n: TableSpec(min(t.num_embeddings, 512), t.dim)
                                             for n, t in base.tables.items()})
    torch.manual_seed(0)
    model = Ranker(spec, RankerConfig(d_model=16, num_blocks=1, target_layers=1, head_dim=8))
    cfg = TrainerConfig(run_dir=run_dir, device="cpu", snapshots_topic="", optim=optim)
    return Trainer(cfg, model, spec, CollectorRegistry())
