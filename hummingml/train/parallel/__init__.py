"""Parallelism applied to a plain model by module name: ``torch`` (DTensor TP, FSDP2, ZeRO-1) and ``neuron``
(neuronx-distributed layers and ZeRO-1, imported lazily so that this package imports without the Neuron SDK).
"""
