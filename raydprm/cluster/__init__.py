"""Ray layer: actors, placement, weight sync and the pipeline driver (the only place, with tune/ and serve/, that imports ray)."""
