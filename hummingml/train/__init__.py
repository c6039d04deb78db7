"""Training HummingLM on the extraction's feature sets.

- ``config``: :class:`TrainConfig` with the parallel and optimizer sub-configs, and the presets;
- ``data``: training examples from feature rows; ``optim``: the optimizer and its schedule;
- ``parallel.torch`` / ``parallel.neuron``: PyTorch DTensor TP + FSDP2 / ZeRO-1, and neuronx-distributed;
- ``checkpoint``: writes and reads training checkpoints (the file names are defined there once);
- ``loop``: the training loop, with no Ray in it; ``ray``: the Ray Train adapter (the only module here that imports
  ``ray`` directly).

May import ``hummingml.model``, ``hummingml.config``, ``hummingml.cluster``, ``hummingml.audio`` and
``hummingml.output`` (the current rows of an extraction output); nothing from
``extract``.
"""
