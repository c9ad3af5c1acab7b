"""Which job variables are secrets, and how they are kept out of sight. Pure.

A variable is a secret when one of the word parts of its name (split on
`_`, case-insensitive) is one of `SECRET_WORDS`: TOKEN, KEY, SECRET,
PASSWORD, PASSWD or CREDENTIAL, each also as a plural. So HF_TOKEN,
WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, DB_PASSWORD and
GOOGLE_APPLICATION_CREDENTIALS are secrets; KEYBOARD_LAYOUT, MONKEY_PATCH,
TOKENIZERS_PARALLELISM and NCCL_IB_PKEY are not (a whole word part has to
match, not a piece of one: a name glued as APIKEY is not recognised, so
spell it API_KEY).

Where a secret of a job's `[env]` is, and where it never is:
- In the engine's database (`engine.db` under the engine home; the file is
  0600, the home 0700, or 0711 for a shared engine): the job's spec is
  stored verbatim, values included, so that a retry, or a restart of the
  engine, can start it again.
- In the `start` message the engine sends a node's agent, over the agent's
  link (SSH's stdin, or a pipe for the head node), never on a command line;
  the agent writes only the names into the run's `spec.json`, and gives the
  values to the supervisor and the job in their environment
  (`/proc/PID/environ`, readable by the job's user and root only).
- horovodrun writes its environment onto every rank's command line
  (`env A=1 ... PROGRAM`, run through `sh -c` and ssh), so a horovodrun job
  with secrets starts behind `engine/secret_exec.py hold`, which takes the
  secrets out of horovodrun's environment into an anonymous memory file
  (memfd, 0600, never on disk) held by a small keeper process for as long as
  horovodrun runs, and every rank starts behind `secret_exec.py rank`, which
  reads them back and execs the rank with them in its environment: a rank on
  the launching node from the keeper's file (`/proc/KEEPER/fd/N`, only the
  job's user may open it), a rank on another node from its ssh session's
  stdin, where our ssh (engine/sshwrap) writes them.
- Never in the engine's log, its events, the API's job views (`show` lists
  the env names only, never a value, which masks more than "***" would) or
  any command line on any node. A job that prints its own secret writes it
  into its log on its node (that file is the job's); the engine's copy, and
  every line it streams to clients, has each secret value of the job's
  `[env]` (of `MIN_MASKED_LEN` characters or more) replaced by `MASK`.
- A secret-looking variable of the engine's own environment is never passed
  on to a job, even where its prefix is allow-listed (engine/launch.py):
  only the profile's `[env]` gives a job secrets.
"""

from __future__ import annotations

from collections.abc import Iterable

SECRET_WORDS = frozenset({
    "TOKEN", "TOKENS", "KEY", "KEYS", "SECRET", "SECRETS", "PASSWORD", "PASSWORDS",
    "PASSWD", "CREDENTIAL", "CREDENTIALS",
})


MASK = "***"
# A shorter value would mask ordinary words ("1", "yes") all over a log; a
# secret that short is no secret.
MIN_MASKED_LEN = 6


def is_secret_name(name: str) -> bool:
    """Whether `name` looks like a secret's (see the module docstring)."""
    return any(part.upper() in SECRET_WORDS for part in name.split("_"))


def secret_names(names: Iterable[str]) -> tuple[str, ...]:
    """The secret-looking names among `names` (a mapping gives its keys), sorted."""
    return tuple(sorted({n for n in names if is_secret_name(n)}))


def masked_values(env: Iterable[tuple[str, str]]) -> tuple[str, ...]:
    """The values of `env`'s secret-looking variables worth masking in
    output (`MIN_MASKED_LEN` or longer), longest first, so that a secret
    holding another is masked whole."""
    values = {v for k, v in env if is_secret_name(k) and len(v) >= MIN_MASKED_LEN}
    return tuple(sorted(values, key=len, reverse=True))


def mask(text: str, values: Iterable[str]) -> str:
    """`text` with every occurrence of each of `values` replaced by `MASK`."""
    for value in values:
        if value in text:
            text = text.replace(value, MASK)
    return text
