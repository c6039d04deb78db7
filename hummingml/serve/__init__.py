"""Inference users touch: hum -> instrument and the remix of uploaded songs, as a library, a command and a service.

- ``model``: the hum model (a checkpoint, or a seeded untrained one labelled as such) with its codec and Basic Pitch;
- ``presets``: instrument clips rendered from the synthesized corpus's instruments (the web page's choices);
- ``uploads``: what an upload must be (size, format sniffed from its bytes, duration) before it is decoded;
- ``remix``: separate -> clean the vocals -> melody -> the instrument plays it -> mix at matched loudness;
- ``app``: the Ray Serve application (the only module here that imports Ray) and its HTTP API;
- ``static/``: the web page the app serves.
"""
