"""cumulo benchmark suite: `make bench` (or `python -m bench.run`) measures the platform
against peers (bare Starlette on uvicorn, Ray Serve, a fresh interpreter) in the same run and
writes docs/benchmarks.md."""
