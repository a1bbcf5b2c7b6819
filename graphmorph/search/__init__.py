"""What builds on the rewrites: the search algorithms (AutoGrow in `autogrow`, NAC in `nac`, with
their policies, choices and plots) and rewrite histories as artifacts (`artifacts`: replay onto a
fresh model, weights with their history, checkpoints loaded back)."""
