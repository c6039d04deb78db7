"""Model weights for the neural stages (DAC codec, Demucs separation): which weights, where they live, what loaded.

- ``config``: :class:`ModelsConfig` (the kind: tiny, random-full or pretrained), :class:`ModelIdentity`, the
  errors and the cache root;
- ``load``: creating, fetching, checking and loading the weights of each kind;
- ``cli``: ``hummingml models prepare|list``.

May import ``hummingml.config`` and ``hummingml.audio``; no Ray.
"""
