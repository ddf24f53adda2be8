"""mlxd's benchmark suite: throughput, first-token latency and cache reuse, measured against the raw engine
and peer servers in the same run. Run it with `python -m benchmarks` (or `make bench`, `mlxd bench`)."""
