"""The emoji dataset: fetch real artwork from package registries, render, caption, shard, stream.

Nothing in this package imports a model: data code knows nothing of the stages.
"""
