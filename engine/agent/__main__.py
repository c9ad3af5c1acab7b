"""`python -m engine.agent`: run the node agent (see engine.agent.agent)."""

import sys

from engine.agent.agent import main

sys.exit(main())
