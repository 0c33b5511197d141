"""Pay-per-use metering: what each invocation used, priced, summed per hour, and quotas.

`meter.Meter` adds each finished invocation (an `Outcome`) into in-memory deltas on the hot
path; `service.Metering` flushes them every second and on stop to its `MeteringRepository`
(cumulo.store.metering; SQLite by default), loads quotas and month-to-date counters at
start, and refuses invocations over a namespace's monthly quota.
"""
