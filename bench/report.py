"""Reports: where results are written, and `make bench`'s tables as text, Markdown and JSON.

Rule: a run always writes its own copy under bench/results/runs/ (git-ignored) and
replaces the tracked bench/results/<name>.* only when asked to record. The JSON is the
parts' dataclasses as they are (`dataclasses.asdict`), so a field's name is its key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

from bench.connections import ConnectionsResult
from bench.harness import ROOT, say
from bench.loop_probe import INTERVAL
from bench.options import BenchOptions, without_paths
from bench.propagation import ChangeTimes, PropagationResult
from bench.rig import Skipped
from bench.scale import (
    ADMIN_GOAL_MS,
    ADMIN_TIMINGS,
    STALL_GOAL_MS,
    STEADY_CONNECTIONS,
    OverGoal,
    ScaleResult,
    Tier,
)
from bench.stats import Spread
from bench.throughput import Row, ThroughputResult
from bench.tls import CONNECTIONS, TlsResult, TlsRow
from bench.tools import Machine

RESULTS = ROOT / "bench" / "results"  # the recorded results, tracked by git
RUNS = RESULTS / "runs"  # every run's own copy, git-ignored
ALL_PARTS = {1, 2, 3, 4, 5}


def result_stems(name: str, record: bool, stamp: str) -> list[Path]:
    """Where a run writes `.json` and `.md`: its own copy under runs/, always, and over the
    tracked `name` only when recording, so a quick or noisy run leaves the tree clean."""
    own = RUNS / f"{name}-{stamp}"
    return [RESULTS / name, own] if record else [own]


def write_pair(stems: list[Path], json_text: str, markdown_text: str) -> None:
    for stem in stems:
        stem.parent.mkdir(parents=True, exist_ok=True)
        stem.with_name(stem.name + ".json").write_text(json_text)
        stem.with_name(stem.name + ".md").write_text(markdown_text)


def stamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


# --------------------------------------------------------------------------- bench


@dataclass
class BenchResults:
    machine: Machine
    options: BenchOptions
    command: str
    errors: dict[str, str] = field(default_factory=dict)  # part name → what failed
    throughput: ThroughputResult | None = None
    propagation: PropagationResult | Skipped | None = None  # through etcd's v2 API
    propagation_v3: PropagationResult | Skipped | None = None
    scale: ScaleResult | Skipped | None = None
    connections: ConnectionsResult | None = None
    tls: TlsResult | None = None

    def to_json(self) -> dict[str, Any]:
        """Every field; a part that did not run is left out rather than null. The reference
        command's paths are shown as `without_paths` shows them."""
        found = {k: v for k, v in asdict(self).items() if v is not None}
        found["options"]["reference"] = without_paths(self.options.reference)
        return found


Table = tuple[str, list[str], list[list[str]], list[str]]  # title, header, rows, notes
T = TypeVar("T")


def fmt(value: object, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


@dataclass(frozen=True)
class Column(Generic[T]):
    """A table's column: its header and, for one item, a field's name or a function of the
    item, its value written by `fmt` with `spec`."""

    header: str
    value: str | Callable[[T], object]
    spec: str = ".1f"

    def cell(self, item: T) -> str:
        value = getattr(item, self.value) if isinstance(self.value, str) else self.value(item)
        return fmt(value, self.spec)


def spread(ms: Spread) -> str:
    """p50 / p99 / max of a `Spread` of milliseconds."""
    return " / ".join(fmt(value) for value in (ms.median, ms.p99, ms.max))


def table(title: str, columns: Sequence[Column[T]], items: Iterable[T], notes: list[str]) -> Table:
    """A row per item, a cell per column."""
    rows = [[column.cell(item) for column in columns] for item in items]
    return (title, [column.header for column in columns], rows, notes)


THROUGHPUT: list[Column[Row]] = [
    Column("case", "case"),
    Column("target", "target"),
    Column("req/s", "rps", ".0f"),
    Column("p50 ms", "p50_ms", ".2f"),
    Column("p99 ms", "p99_ms", ".2f"),
    Column("MB/s", "mb_s", ".1f"),
    Column("err", "errors"),
    Column("non-2xx", "non_2xx"),
    Column("CPU µs/req", "cpu_us_per_req", ".0f"),
    Column("× nginx-proxy", "x_nginx_proxy", ".3f"),
    Column("MB/s × nginx-proxy", "mb_x_nginx_proxy", ".3f"),
    Column("× pywsgi", "x_pywsgi", ".3f"),
    Column("× reference", "x_reference", ".3f"),
    Column("MB/s × reference", "mb_x_reference", ".3f"),
]

Change = tuple[str, ChangeTimes]  # (what changed, its times)
PROPAGATION: list[Column[Change]] = [
    Column("change", lambda c: c[0]),
    Column("min ms", lambda c: c[1].min),
    Column("median ms", lambda c: c[1].median),
    Column("p99 ms", lambda c: c[1].p99),
    Column("max ms", lambda c: c[1].max),
    Column("timeouts", lambda c: f"{c[1].timeouts}/{c[1].trials}"),
]

SCALE: list[Column[Tier]] = [
    Column("domains", lambda t: f"{t.domains:,}"),
    Column("routable after start s", "routable_after_start_s", ".2f"),
    Column("RSS MB", "rss_after_load_mb", ".0f"),
    Column("1000 changes visible s", "changes_visible_s", ".2f"),
    Column("lag after last write ms", "changes_lag_after_last_write_ms", ".0f"),
    Column("single req/s", "single_rps", ".0f"),
    Column("random req/s", "random_rps", ".0f"),
    Column("random × single", "random_x_single", ".3f"),
    Column(
        "CPU µs/req single / random",
        lambda t: f"{fmt(t.single_cpu_us_per_req, '.0f')} / {fmt(t.random_cpu_us_per_req, '.0f')}",
    ),
    Column("steady req/s", lambda t: t.steady.rps, ".0f"),
    Column(
        f"health ms p50 / p99 / max (goal ≤ {ADMIN_GOAL_MS:g})",
        lambda t: spread(t.steady.health_ms),
    ),
    Column(
        f"metrics ms p50 / p99 / max (goal ≤ {ADMIN_GOAL_MS:g})",
        lambda t: f"{spread(t.steady.metrics_ms)} ({t.steady.metrics_timed})",
    ),
    Column(
        f"longest stall ms (goal ≤ {STALL_GOAL_MS:g}) / scraping",
        lambda t: f"{fmt(t.steady.stall_ms.max)} / {fmt(t.steady.stall_scraping_ms.max)}",
    ),
    Column("nginx probed ms (the machine)", lambda t: t.steady.machine_ms.max),
    Column(
        f"loop lag: wake-ups over {STALL_GOAL_MS:g} ms / scraping, latest under ms",
        lambda t: f"{_over(t.steady.loop_lag)} / {_over(t.steady.loop_lag_scraping)}",
    ),
    Column(
        f"runs of 1 ms+: over {STALL_GOAL_MS:g} ms / scraping, longest under ms",
        lambda t: f"{_over(t.steady.loop_runs)} / {_over(t.steady.loop_runs_scraping)}",
    ),
    Column("RSS after wrk MB", "rss_after_wrk_mb", ".0f"),
]

CONNECTIONS_COLUMNS: list[Column[ConnectionsResult]] = [
    Column("connections", lambda p: f"{p.connections:,}"),
    Column("RSS idle MB", "rss_idle_mb", ".0f"),
    Column("RSS holding MB", "rss_held_mb", ".0f"),
    Column("KB/conn", "kb_per_connection", ".1f"),
    Column("open s", "open_s", ".1f"),
    Column("fresh request ms", "fresh_request_ms", ".1f"),
    Column("held reused", "sample_reused_ok"),
]

TLS: list[Column[TlsRow]] = [
    Column("load", "load"),
    Column("target", "target"),
    Column("req/s", "rps", ".0f"),
    Column("p99 ms", "p99_ms", ".2f"),
    Column("errors", "errors"),
    Column("CPU µs/req", "cpu_us_per_req", ".0f"),
    Column("× nginx-tls", "x_nginx", ".3f"),
]

SKIPPED: list[Column[Skipped]] = [Column("skipped", "skipped")]
FAILED: list[Column[str]] = [Column("error", lambda error: error)]


def _throughput(p1: ThroughputResult, opts: BenchOptions) -> Table:
    notes = [
        f"wrk -t1, keep-alive, {opts.seconds} s × {opts.rounds} round(s) in"
        " alternating order; medians over rounds; ratios taken within a round.",
        "CPU µs/req: CPU time of the server under test (all its processes) per request.",
        "gogeta and gogeta-gunicorn with their defaults (access log combined, metrics,"
        " the live view's counting); gogeta-nolog: -accessLog off; nginx: access_log off.",
    ]
    if opts.reference:
        notes.append(f"reference (BENCH_REFERENCE): {without_paths(opts.reference)}")
    return table("1. Throughput and latency", THROUGHPUT, p1.summary, notes)


def _propagation(p2: PropagationResult, title: str) -> Table:
    changes = [("new domain", p2.new_domain_ms), ("location change", p2.location_change_ms)]
    notes = [
        "From just before the etcd write to the first answer by the new rule;"
        " gogeta polled every 1 ms over one keep-alive connection."
    ]
    return table(title, PROPAGATION, changes, notes)


def _scale(p3: ScaleResult) -> Table:
    notes = [p3.note] if p3.note else []
    notes.append(
        "Changes: sequential location writes from one client; 'visible' is"
        " from the first write to the last change served."
    )
    notes.append(
        f"Steady: wrk -c{STEADY_CONNECTIONS} over every domain, each connection paced so"
        " that the total is about half the random req/s; two windows: health timed"
        f" ({ADMIN_TIMINGS} requests, evenly spaced) in the first, metrics in the second (as"
        f" many of {ADMIN_TIMINGS} as fit: the count in brackets). In both a probe sends"
        f" health every {INTERVAL * 1000:g} ms on its own connection: its longest round trip"
        f" (+ {INTERVAL * 1000:g} ms) bounds the event loop's longest stall from above, counting"
        " the CPU others on the machine took from gogeta too; 'scraping': the same in the"
        " second window, metrics rendered meanwhile; 'nginx probed': the longest round trip"
        " of the same probe of the nginx backend in the first window, what the machine alone"
        " does. 'loop lag': gogeta's own gogeta_event_loop_lag_seconds over each window, a"
        " wake-up due every 5 ms: how many of them came later than the goal (of how many),"
        " and the bucket bound the latest stayed under; the CPU others took from gogeta"
        " counts here too, and so do many requests ready at once, each taking its turn."
        " 'runs': gogeta's gogeta_event_loop_run_seconds over each window, every run of one"
        " greenlet that held the loop 1 ms or more by itself: how many were over the goal"
        " (of how many), and the bound the longest stayed under. The goals are set for"
        " 100,000 domains."
    )
    return table("3. Scale (gogeta standalone, IoEtcd)", SCALE, p3.tiers, notes)


def _over(counts: OverGoal) -> str:
    under = f"{counts.under_ms:g}" if counts.under_ms is not None else "more"
    return f"{counts.over_goal}/{counts.observed} (< {under})"


def _connections(p4: ConnectionsResult) -> Table:
    title = "4. Idle keep-alive connections (gogeta standalone)"
    return table(title, CONNECTIONS_COLUMNS, [p4], [p4.note] if p4.note else [])


def _tls(p5: TlsResult, opts: BenchOptions) -> Table:
    notes = [
        f"wrk -t1 -c{CONNECTIONS} https://…/small, {opts.seconds} s × {opts.rounds} round(s),"
        " alternating order; ratios to nginx-tls within a round, medians over rounds.",
        "handshakes: `Connection: close`, a new connection and a full handshake per request;"
        " keep-alive: one handshake per connection.",
        f"Same certificate ({p5.key_type}) for both; TLS 1.3 chosen by wrk; one process each.",
    ]
    return table("5. TLS", TLS, p5.summary, notes)


def _skipped(title: str, part: Skipped) -> Table:
    return table(title, SKIPPED, [part], [])


def tables(results: BenchResults) -> list[Table]:
    """(title, header, rows, notes) for every part that ran."""
    out: list[Table] = []
    if results.throughput:
        out.append(_throughput(results.throughput, results.options))
    p3 = results.scale
    for api, p2 in (("v2", results.propagation), ("v3", results.propagation_v3)):
        title = f"2. Propagation (etcd {api})"
        if isinstance(p2, Skipped):
            out.append(_skipped(title, p2))
        elif p2 is not None:
            out.append(_propagation(p2, title))
    if isinstance(p3, Skipped):
        out.append(_skipped("3. Scale", p3))
    elif p3 is not None:
        out.append(_scale(p3))
    if results.connections:
        out.append(_connections(results.connections))
    if results.tls:
        out.append(_tls(results.tls, results.options))
    for part_name, error in results.errors.items():
        out.append(table(f"{part_name}: failed", FAILED, [error], []))
    return out


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def markdown(results: BenchResults) -> str:
    m = results.machine
    lines = [
        "# gogeta benchmark",
        "",
        f"{m.date}, commit {m.commit}; {m.cpu}, {m.cores} cores, Linux {m.kernel};"
        f" Python {m.python}, gevent {m.gevent}, urllib3 {m.urllib3};"
        f" {m.nginx}; {m.wrk}; {m.etcd}; {m.gunicorn}.",
        "",
        f"Command: `{results.command}`",
    ]
    for title, header, rows, notes in tables(results):
        lines += ["", f"## {title}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if notes:
            lines.append("")
            lines += notes
    return "\n".join(lines) + "\n"


def write_bench(results: BenchResults, record: bool) -> None:
    """A timestamped copy, git-ignored, always; `latest` only when recording every part;
    then the tables on stdout."""
    complete = set(results.options.parts) >= ALL_PARTS
    if record and not complete:
        say("BENCH_RECORD: only a run of every part replaces bench/results/latest.*")
    stems = result_stems("latest", record and complete, stamp())
    text = json.dumps(results.to_json(), indent=2, default=str) + "\n"
    write_pair(stems, text, markdown(results))
    print()
    for title, header, rows, notes in tables(results):
        print(f"== {title}")
        print(text_table(header, rows))
        for note in notes:
            print(f"   {note}")
        print()
    print(f"written: {stems[0]}.md and .json")
