"""llmconsole's Textual screen. A client of the engine (`engine.client`)
only, never of its store or agents.

    state.py    what the screen knows: jobs, nodes, loss series; pure
    bridge.py   the one module that talks to the engine: snapshot, event
                stream with reconnect and backoff, actions
    app.py      the Textual app: widgets render `state`, actions go through
                the bridge, background work runs in workers
"""
