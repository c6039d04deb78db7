"""HummingLM: the AR codec LM over DAC level 0 and the NAR upsampler for the other levels, in plain PyTorch.

- ``config``: :class:`ModelConfig`; ``lm``: the transformer, :class:`HummingLM` and :class:`NARUpsampler`;
- ``batch``: the batch contract built from per-example code arrays; ``flops``: parameter and FLOP accounting.

No parallelism and no Ray inside: ``hummingml.train.parallel`` applies TP/FSDP or swaps in Neuron layers by module
name. Imports nothing else of ``hummingml``: torch and numpy only.
"""
