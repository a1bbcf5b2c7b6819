"""The search algorithms built on the rewrites: AutoGrow (and NAC, later)."""
