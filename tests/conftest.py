"""Shared fixtures: a real Kafka broker for tests marked ``kafka``, unique topic names, GPU skipping."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The kernel tests need Triton imported with its interpreter enabled (CPU hosts) before any other test module
# imports torch's triton; loading their conftest first lets them run in this process whatever the test order.
import tests.kernels.conftest  # noqa: F401
from deploy.kafka import BrokerConfig, BrokerError, KafkaBroker

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="no CUDA GPU on this host (gpu tests run where one exists)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def kafka_tools() -> None:
    """Java and Maven, which a local broker needs: skips without them (fails under ``CI=true``)."""
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    if missing:
        msg = f"Kafka tests need {' and '.join(missing)}: install Java 17+ and Maven (apt-get install openjdk-17-jre-headless maven)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="session")
def kafka_broker(kafka_tools: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A real single-node KRaft broker on a free 127.0.0.1 port for the whole test session (a fresh data dir)."""
    state = Path(tmp_path_factory.mktemp("kafka"))
    broker = KafkaBroker(BrokerConfig(state_dir=state, port=0, heap="512m"))
    try:
        broker.start()
    except BrokerError as e:
        pytest.fail(f"could not start the local Kafka broker: {e}")
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def bootstrap(kafka_broker: KafkaBroker) -> str:
    """``host:port`` of the session broker."""
    return kafka_broker.bootstrap


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix so each test's topics never collide with another's."""
    return f"t{uuid.uuid4().hex[:10]}-"
