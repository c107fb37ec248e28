"""Training: the configuration, the one loop, its hooks, and the recipe that composes the plug-ins."""
