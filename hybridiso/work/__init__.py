"""work: what the user made, and keeping it. inventory finds every piece of work an environment holds; backups saves it to refs and restores it."""
