"""llmconsole's own `ssh` for horovodrun across nodes: `ssh.py` (the
program, standard library only) and `bin/ssh` (the executable put first on
the job's PATH). The contract is `ssh.py`'s docstring."""
