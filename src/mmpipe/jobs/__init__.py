"""Jobs: a source, a list of stages and a sink, run by an engine."""
