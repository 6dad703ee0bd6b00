"""What the benchmarks share: percentiles, the machine line, writing JSON and Markdown."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from podgate_sandbox.controlplane import Sandbox, SandboxConfig
from podgate_sandbox.rollout import percentile

# Network rule: loopback only. The cloud SDKs' credential chains end at the instance metadata
# services; benchmarks run their clients against local doubles and must never ask one.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ["ALIBABA_CLOUD_ECS_METADATA_DISABLED"] = "true"

RESULTS = Path(__file__).parent / "results"


def summary(values: list[float]) -> dict[str, float]:
    """n, median, nearest-rank p99 and max of a sample."""
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": percentile(values, 99),
        "max": max(values),
    }


def write(out: str, res: dict[str, Any], markdown: Callable[[dict[str, Any]], str]) -> None:
    """Stamp the results with date and machine, write ``out``.json and ``out``.md, print the table."""
    res.setdefault("date", time.strftime("%Y-%m-%d"))
    res.setdefault(
        "machine", f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
    )
    Path(out + ".json").write_text(json.dumps(res, indent=2) + "\n")
    Path(out + ".md").write_text(markdown(res))
    print(markdown(res))


@contextlib.contextmanager
def sandbox(config: SandboxConfig, state: Path | None = None) -> Iterator[Sandbox]:
    """A sandbox of the benchmark's own (ports and loopback ranges in ``config``), up for the
    block and down after it, in a temporary state directory unless one is given."""
    with contextlib.ExitStack() as stack:
        if state is None:
            state = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="podgate-bench-")))
        sb = Sandbox(state, config)
        sb.up()
        try:
            yield sb
        finally:
            sb.down()
