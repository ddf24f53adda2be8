"""The speculative-decoding benchmark: decode speed with prompt lookup against the same requests with
speculation off, on an edit turn (the answer copies a span of a file in the prompt, as Claude Code's Edit
does) and on free text, at 1 and 4 streams, with the acceptance rate and the cost ratio (one verification
pass of k+1 tokens against one token) that explains the figure. Run it with `python -m benchmarks.speculative`
(or `mlxd bench --speculative`)."""
