"""What a soak reports (typed), and its Markdown; the JSON is `asdict` of `SoakResult`.

Rule: built once the load and the churn have stopped, from their counters; nothing here
measures. Field names are the JSON keys of bench/results/soak.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any

from bench.options import SoakOptions
from bench.report import result_stems, stamp, write_pair
from bench.soak_load import GROUPS


@dataclass(frozen=True)
class Latency:
    """Milliseconds, None for a group that got no answer."""

    p50: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True)
class Sample:
    """Taken every 10 s of the soak."""

    seconds: float
    rss_mb: float
    requests: int
    unexpected: int
    churn_ops: int


@dataclass(frozen=True)
class Rss:
    start: float  # after the warm-up
    end: float  # at the end of the soak, load still running
    after_load: float
    growth_pct: float  # start → end
    marks: list[tuple[str, float]]


@dataclass(frozen=True)
class ChurnReport:
    operations: int
    by_op: dict[str, int]
    etcd_writes: int
    write_errors: dict[str, int]
    wakeups_seen: int
    wake_latency_ms_median: float | None


@dataclass(frozen=True)
class SoakResult:
    started: str
    machine: str
    options: SoakOptions
    passed: bool
    failures: list[str]
    requests: int  # warm-up included
    seconds_with_load: float
    rate: float  # req/s over the measured minutes
    answers: dict[str, dict[str, int]]  # group → "status page" → count
    errors: dict[str, dict[str, int]]  # group → connection-level error kind → count
    unexpected_total: int
    unexpected: dict[str, int]
    unexpected_examples: list[str]
    latency_ms: dict[str, Latency]
    rss_mb: Rss
    samples: list[Sample]
    churn: ChurnReport
    gogeta_counters: dict[str, Any]  # as gogeta's /__gogeta/routes reports them
    table_differences: list[str]
    ghost_instances: list[str]
    gogeta_log_levels: dict[str, int]
    gogeta_log_errors: list[str]


def render(r: SoakResult) -> str:
    o, rss, churn = r.options, r.rss_mb, r.churn
    verdict = "; ".join(r.failures) if r.failures else "no unexpected error, flat memory"
    lines = [
        "# gogeta soak",
        "",
        f"{r.started}: {o.minutes:g} min after a {o.warmup_seconds:g} s warm-up,"
        f" {o.concurrency} client threads (keep-alive), {o.backends} backends, one churn"
        f" operation every {o.churn_ms:g} ms, seed {o.seed}. {r.machine}.",
        "",
        f"**Verdict: {'PASS' if r.passed else 'FAIL'}** ({verdict})",
        "",
        "| requests | req/s | unexpected | churn ops | etcd writes | wake-ups seen | "
        "RSS warm-up → end |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r.requests:,} | {r.rate:,.0f} | {r.unexpected_total} | "
        f"{churn.operations:,} | {churn.etcd_writes:,} | {churn.wakeups_seen} | "
        f"{rss.start:.1f} → {rss.end:.1f} MB ({rss.growth_pct:+.1f} %) |",
        "",
        "## Answers by group",
        "",
        "| group | answers | latency p50 / p99 / max (ms) |",
        "|---|---|---|",
    ]
    for group in GROUPS:
        counts = r.answers[group]
        text = ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        lat = astuple(r.latency_ms[group])
        lat_text = " / ".join("-" if v is None else f"{v:.1f}" for v in lat)
        lines.append(f"| {group} | {text or '-'} | {lat_text} |")
    lines += ["", "## Errors by kind (connection level)", ""]
    errors = {g: e for g, e in r.errors.items() if e}
    if not errors:
        lines.append("None.")
    for group, counts in errors.items():
        lines.append(f"- {group}: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    lines += ["", "## gogeta RSS (MB)", "", "| at | RSS |", "|---|---:|"]
    for label, value in rss.marks:
        lines.append(f"| {label} | {value:.1f} |")
    lines += [
        "",
        "## Churn",
        "",
        ", ".join(f"{k}: {v}" for k, v in sorted(churn.by_op.items())),
        "",
        f"Wake-ups: {churn.wakeups_seen} seen by the orchestrator "
        f"(median {churn.wake_latency_ms_median or 0:.0f} ms from passivation to "
        "gogeta's write, seen at the churn thread's ticks), "
        f"gogeta counters {r.gogeta_counters}.",
        "",
        "Table after churn stopped: "
        + ("matches etcd" if not r.table_differences else f"{r.table_differences}"),
        "",
        "Instances in etcd that the soak did not write (re-created by a late write): "
        + (", ".join(r.ghost_instances) or "none"),
        "",
        f"gogeta log: {r.gogeta_log_levels or 'no warnings'}",
    ]
    if r.unexpected_examples or r.gogeta_log_errors:
        lines += ["", "## Unexpected (first ones)", "", "```"]
        lines += r.unexpected_examples[:20] + r.gogeta_log_errors[:20]
        lines += ["```"]
    return "\n".join(lines) + "\n"


def write_soak(result: SoakResult, record: bool) -> tuple[str, list[Path]]:
    """The run's own copy, and bench/results/soak.* when recording: (Markdown, stems)."""
    text = render(result)
    stems = result_stems("soak", record, stamp())
    write_pair(stems, json.dumps(asdict(result), indent=1) + "\n", text)
    return text, stems
