"""The constrained-decoding benchmark: decode speed of a forced tool call held to its grammar against the same
call decoded free (an mlxd with constrained decoding off), with the grammar's compile and mask times. Run it
with `python -m benchmarks.constrained` (or `mlxd bench --constrained`)."""
