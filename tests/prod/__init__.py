"""The production shape: docker/prod on the real Engine."""
