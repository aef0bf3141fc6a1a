"""The base layer, with no torch: config, overrides, errors, the store, files, records, registries, seeds."""
