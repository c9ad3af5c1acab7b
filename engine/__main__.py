"""`python -m engine ...` is the `llmconsole` command."""

import sys

from engine.cli import main

sys.exit(main())
