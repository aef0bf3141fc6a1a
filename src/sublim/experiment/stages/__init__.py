"""The stages of an experiment, one file each; every stage owns its config slice and its key."""
