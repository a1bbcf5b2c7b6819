"""The run infrastructure: data sets (`data`), the trainer (`train`, `distributed`), optimizer state
across rewrites (`optim`), run directories and checkpoints (`rundir`), the model a history applies
to (`sources`) and its document (`history_file`), and the report over runs (`report`). It builds on
the graph engine and the models, never on the rewrites or the searches."""
