"""llmconsole's engine: the durable job queue, the GPU scheduler, the node
agents and the daemon that wires them. Headless: it never imports a screen
library (textual, rich); the console is one of its clients."""

__version__ = "0.1.0"
