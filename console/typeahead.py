"""Keys typed in the instant a key opens a text field land in that field.

Textual hands each key to the widget that has the focus when the app takes
the key from its queue, and checks an ordinary binding only once the key
has bubbled back up to the app from that widget. So the keys typed with the
one that opens a field (`s` the submit form, `:` the command line, `/` a
filter or a log search) had already been handed to the widget below (the
jobs table), which does not want them, and they bubbled up to the app in
turn, behind the opening key: there they met the app's bindings (the `r`
of "pretrain-tiny" retried the selected job, its `a` hid the ended jobs) or
nothing, and were lost.

Two remedies, the first exact:
- `s` is a priority binding (acted on when the app takes the key, before
  any widget sees it) whose action awaits the form's mount, so the app
  takes the next key once the form's field has the focus; in a text field
  the action steps aside (SkipAction) and `s` is a letter.
- `hand_on`, for the other keys that open a field: an Input stops every
  printable key it is given, so a printable key that reaches the app while
  an Input has the focus was typed ahead of it, and goes into that Input
  (through the Input's own queue, in the order the keys come back). Keys
  read from the terminal after the field has the focus go straight to it,
  so a burst split across two reads can still come out of order there.
"""

from __future__ import annotations

from textual import events
from textual.widget import Widget
from textual.widgets import Input


def hand_on(focused: Widget | None, event: events.Key) -> bool:
    """Give a typed-ahead printable key to the focused Input; True when it
    was (the caller then does nothing more with it)."""
    if not isinstance(focused, Input) or not event.is_printable or not event.character:
        return False
    event.stop()
    event.prevent_default()
    focused.post_message(events.Key(event.key, event.character))
    return True
