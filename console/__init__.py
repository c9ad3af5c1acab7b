"""llmconsole's Textual screen: a client of the engine (engine.client), never
of its store or agents. The screen itself lands with the [console] issue;
until then the bare `llmconsole` command prints the same overview as text."""
