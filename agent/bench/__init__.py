"""`dodo-outbox bench`: every path of the outbox measured beside the baseline a user would compare it with.

Figures are ratios measured in the same run (the machines this runs on are shared and noisy), with the
two sides of each ratio run in alternating rounds. Nothing here is imported by the agent itself.

Modules: `runner` (orchestration, table, JSON), `common` (rows, context, paired rounds, events),
`baselines` (raw sqlite3, persist-queue and bare-loop baselines: the only SQL outside agent/store,
there to be measured against), `enqueue`, `http` with `loadgen` (the load generator, run in its own
process), `drain` with `emulator_proc` (the emulator in its own process), `latency`, `scale` (with the
memory child process). The entry point is `agent.bench.runner.run_benchmarks`; this package imports
nothing itself, so `python -m agent.bench.loadgen` (and the other child processes) start light.
"""
