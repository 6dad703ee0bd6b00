"""PNG timelines of a rollout round: what the load balancer had, what clients got, and when."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt

from podgate_sandbox.rollout import RoundResult

BUCKET = 0.25  # seconds per bar of the request rate


def timeline(result: RoundResult, title: str, path: Path, replicas: int) -> Path:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, height_ratios=[1, 1.4])
    if result.healthy:
        xs, ys = zip(*result.healthy, strict=True)
        top.step(xs, ys, where="post", color="tab:green", label="targets healthy in HAProxy")
    top.set_ylim(-0.2, replicas * 1.7 + 0.5)
    top.set_ylabel("healthy targets")
    top.legend(loc="lower left", fontsize=8)

    ok: Counter[int] = Counter()
    bad: Counter[int] = Counter()
    for t, kind in result.outcomes:
        (ok if kind == "ok" else bad)[int(t // BUCKET)] += 1
    buckets = sorted(set(ok) | set(bad))
    xs_b = [b * BUCKET for b in buckets]
    bottom.bar(
        xs_b,
        [ok[b] / BUCKET for b in buckets],
        width=BUCKET,
        align="edge",
        color="tab:blue",
        label="successful requests/s",
    )
    bottom.bar(
        xs_b,
        [bad[b] / BUCKET for b in buckets],
        width=BUCKET,
        align="edge",
        color="tab:red",
        bottom=[ok[b] / BUCKET for b in buckets],
        label=f"failed requests/s ({result.failed} in all)",
    )
    bottom.set_ylabel("requests / s")
    bottom.set_xlabel("seconds since `kubectl rollout restart`")
    bottom.legend(loc="lower left", fontsize=8)
    for ax in (top, bottom):
        ax.axvline(0, color="black", linestyle="--", linewidth=1)
        ax.axvline(result.rollout_s, color="black", linestyle=":", linewidth=1)
    top.text(0, top.get_ylim()[1] * 0.92, " rollout starts", fontsize=8, va="top")
    top.text(
        result.rollout_s,
        top.get_ylim()[1] * 0.92,
        f" rollout complete ({result.rollout_s:.1f} s)",
        fontsize=8,
        va="top",
    )
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
