"""The hum model a service or a remix plays with: HummingLM (AR + NAR) of one checkpoint, its DAC and Basic Pitch.

Without a checkpoint the model is the ``debug`` preset's HummingLM (with as many codebooks as the DAC has) with
seeded random weights, and the DAC is the tiny one unless another is asked for: the whole path runs (for trying the
service and for tests) but the audio carries no musical meaning, and every answer says so (:attr:`HumModel.label`,
``trained: false``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hummingml.audio import F32
from hummingml.eval.generate import (
    Generated,
    check_codec,
    extraction_record,
    generate,
    recorded_models_config,
)
from hummingml.stages.pitch import PitchDetector
from hummingml.weights.config import ModelIdentity, ModelsConfig

UNTRAINED_PRESET = "debug"  # the model shape used without a checkpoint, with the DAC's codebook count and size


@dataclass
class HumModel:
    """Everything :func:`hummingml.eval.generate.generate` needs, loaded once."""

    cfg: Any  # the checkpoint's TrainConfig
    ar: Any  # HummingLM
    nar: Any  # NARUpsampler
    dac: Any  # dac.DAC the training features were extracted with
    dac_identity: ModelIdentity
    pitch: PitchDetector
    trained: bool  # False: seeded random HummingLM weights (no checkpoint)
    label: str  # one line for logs, sidecars and HTTP headers

    def play(self, hum: F32, hum_sample_rate: int, timbre: F32, timbre_sample_rate: int, **kwargs: Any) -> Generated:
        """The hum's melody played with ``timbre``'s instrument (:func:`hummingml.eval.generate.generate`, whose
        keyword arguments ``kwargs`` are)."""
        return generate(hum, hum_sample_rate, timbre, timbre_sample_rate, self.ar, self.nar, self.cfg, self.dac,
                    self.pitch, **kwargs)  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the label, trained or not, the model shape and the DAC's identity."""
        return {
            "label": self.label,
            "trained": self.trained,
            "preset": self.cfg.preset,
            "name": self.cfg.name,
            "dac": self.dac_identity.to_dict(),
        }


def load_hum_model(checkpoint: str = "", models: ModelsConfig | None = None, seed: int = 0) -> HumModel:
    """Load a checkpoint's models (``checkpoint`` a checkpoint or run directory), or an untrained one when ``""``.

    Args:
        checkpoint: see :func:`hummingml.train.checkpoint.load_checkpoint`; ``""`` = untrained :data:`UNTRAINED_PRESET`.
        models: which DAC to load; None = the one the checkpoint's training features were extracted with (as far as
            its record is readable here), else the tiny DAC.
        seed: initialisation seed of the untrained model.

    Raises:
        CodecMismatchError: the DAC does not fit the checkpoint. FileNotFoundError / ValueError: a bad checkpoint.
        ModelError: the DAC cannot be loaded (offline with no cached weights, a checksum mismatch).
    """
    import torch

    from hummingml.model.lm import HummingLM, NARUpsampler
    from hummingml.train.checkpoint import load_checkpoint
    from hummingml.train.config import from_preset
    from hummingml.weights.load import load_dac

    if checkpoint:
        cfg, ar, nar = load_checkpoint(checkpoint)
        record = extraction_record(cfg.data.features)
        dac, identity = load_dac(models or recorded_models_config(record))
        label = f"checkpoint {checkpoint} ({cfg.preset}, run {cfg.name})"
    else:
        record = None
        dac, identity = load_dac(models or ModelsConfig(kind="tiny"))
        cfg = from_preset(UNTRAINED_PRESET)  # its shape, with the DAC's codebooks
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, n_codebooks=int(dac.n_codebooks), codebook_size=int(dac.codebook_size)))  # fmt: skip
        torch.manual_seed(seed)
        ar, nar = HummingLM(cfg.model).eval(), NARUpsampler(cfg.model).eval()
        label = f"UNTRAINED {UNTRAINED_PRESET} HummingLM (random weights, seed {seed}): the audio has no meaning"
    check_codec(cfg.model, dac, identity, record)
    if identity.random_weights:
        label += f"; DAC {identity.kind} (random weights)"
    return HumModel(cfg, ar, nar, dac, identity, PitchDetector(), bool(checkpoint), label)
