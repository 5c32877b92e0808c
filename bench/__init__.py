"""gogeta's benchmarks: `make bench` (bench/run.py) and `make soak` (bench/soak.py).

Layers, each importing only those above it: `harness` (processes, ports, waiting, the
measures taken of a process) and `stats`; `options` (every BENCH_*/SOAK_* variable);
`tools`, `servers`, `clients` (the programs driven: nginx, wrk, etcd, gogeta, gunicorn)
and `loop_probe` (part 3's stall probe, a client run as a process of its own);
one module per part, each returning a dataclass; `report` and `soak_report` (Markdown and
JSON); the two entry points. Nothing here is imported by gogeta or by its tests, except
`report`'s choice of where results are written, which a test checks against git.
"""
