"""The node agent: `python -m engine.agent --node NAME --root DIR` speaks JSON
lines (commands on stdin, events on stdout) and starts each job through the
stdlib-only `supervise.py`, so jobs outlive the agent. Modules: `agent` (the
process), `protocol` (commands), `runs` (run directories), `telemetry`
(psutil + NVML), `supervise` (the per-job script). Importing this package
imports nothing heavy."""
