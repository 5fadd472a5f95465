"""The async shells of the pipeline: each fetches state, calls a decision, carries it out."""
