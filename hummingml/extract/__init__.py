"""Extraction: audio in, the audio-feature and sine-audio-feature Parquet sets out.

- ``config``: :class:`ExtractConfig` and the run metadata every output file records;
- ``record``: the segment record that travels between steps (a pickled dict per row) and its Arrow tables;
- ``sources``: where inputs come from (files, object stores, manifests) and how they are opened and hashed;
- ``steps``: decode, separate, pitch, codec and commit as batch callables, independent of any executor;
- ``store``: exactly-once Parquet output (staged files, commit markers, recovery);
- ``card``: the dataset card (``README.md`` with ``configs:``) written beside ``summary.json`` at every output root;
- ``metrics``: the job's metrics (names, kinds, tags, buckets) and the reporter the steps call;
- ``local``: the steps in one process; ``ray``: the steps on Ray Data (the only module here that imports
  ``ray`` directly);
- ``job``: one extraction run, with its accounting; ``inspect`` and ``demo``: the ``hummingml inspect``/``demo``
  commands.

May import ``hummingml.audio``, ``config``, ``cluster``, ``stages``, ``weights``, ``output``, ``testing`` (the demo's
corpus) and ``schemas``; nothing from ``model``, ``train`` or ``eval``.
"""
