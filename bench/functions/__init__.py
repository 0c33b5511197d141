"""Function files the benchmarks deploy with `cumulo deploy PATH --name NAME`."""
