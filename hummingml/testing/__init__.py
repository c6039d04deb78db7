"""Shipped test material, usable in users' own tests: ``signals`` (sines, chords, noise), ``corpus`` (a small
synthesized corpus with its notes as ground truth) and ``hostile`` (inputs that must each end as a known outcome).

May import ``hummingml.audio``, ``hummingml.stages`` and ``hummingml.output`` (``signals.output_keys``).
"""
