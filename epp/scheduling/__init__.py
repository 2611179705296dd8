"""The scheduling engine: profiles, the scheduler cycle, the pipeline and its holder."""
