"""ttsyncd's benchmark harness: `python -m bench` from the repository root (see bench/README.md).

It starts its own redis-server on a unix socket, builds towns of several sizes and measures the
daemon's latencies both ways, cold push and pull against a tinytown-0.10-style baseline and the
pipelined limit, a burst of Redis updates, and the idle daemon's CPU and memory. It prints a
table with each target met / NOT met and writes a JSON report; it never fails on time.
"""
