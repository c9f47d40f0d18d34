"""Built-in testbed: tasks with gold rewards, tiny models trained here, synthetic feedback."""
