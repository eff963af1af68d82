"""services: what an agent's services get of their own, e.g. a database branch per agent from a template."""
