"""Offline labeling on Ray Data: job config, listing, decode stage, graph, predictor, commit protocol, `run.run`."""
