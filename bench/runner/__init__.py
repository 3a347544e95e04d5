"""The comparison suite: workloads W1-W6 run against Conveyor and its peers.

cli.py        ``python -m bench run`` / ``report``: the options
harness.py    every (system, workload, layout, repeat), each under a time cap
measure.py    one measurement: producer, workers, completions, the figures
workloads.py  the workloads' sizes, full and --quick
recorder.py   how a task records its completion (the same for every system)
produce.py    the producer, run as its own process per measurement
processes.py  starting, stopping and killing worker and broker processes
machine.py    cores, memory, and the disk's fdatasync latency
report.py     results.md: a table per workload, ratios to Conveyor
plots.py      the PNG plots
systems/      one adapter module per system
"""
