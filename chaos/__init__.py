"""The fault campaign: what the engine promises under kill -9, node crashes,
hung links and dead ranks, measured on this machine's loopback
(`python -m chaos`, `make chaos`). The shared machinery of the campaign and
of the test suite lives here: a real engine in a throw-away home
(`engine_handle`) and real sshd test hosts on 127.0.0.2... (`hosts`)."""
