"""Developer tools: `make run`'s example, `make pages`' renderer, and what they share with
the tests and the benchmarks (`devtools.machine`). Never imported by gogeta itself."""
