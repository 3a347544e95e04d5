"""Conveyor's benchmarks: ``python -m bench run`` measures Conveyor beside its
peers (bench/runner/); bench/inprocess.py and bench/network.py measure
Conveyor alone."""
