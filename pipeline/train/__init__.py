"""The training stage's parts: shard loader, hierarchical classifier and the train/eval loop (need torch).

Import the submodules directly (``pipeline.train.loop``); this package imports nothing so that it
stays importable without torch.
"""
