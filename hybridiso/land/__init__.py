"""``hybridiso land``: a local merge train (issue 14; docs/land.md).

queue (the order and the loop), apply (scratch worktrees and the three
methods), check (the check commands, with a timeout), store (the land lock,
the journal an interrupted run leaves, the paths under the state dir),
report (table, JSON, markdown)."""
