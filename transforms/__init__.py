"""Graph rewrites on captured models (grow, prune, cells).

Each rewrite is a pure function from a GraphModule to a new one, checked before it edits and
verified after. The rewrites arrive with the growth and pruning work; this package imports only
the graphmorph core, never the search algorithms or the command line.
"""

__all__: list[str] = []
