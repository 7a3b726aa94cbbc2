"""One forward pass of the LLM over a reduced batch: batch layouts and padding (`layout`), in-LLM reduction
stages (`stages`), and the biased attention function with its per-forward context (`attention`)."""
