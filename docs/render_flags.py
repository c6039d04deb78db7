"""Write docs/extract-flags.md from ExtractConfig: ``python docs/render_flags.py``."""

from pathlib import Path

from hummingml.config import flags_markdown
from hummingml.pipeline import ExtractConfig

HEADER = """# Extraction flags

`python -m ray_jobs.extract` and `hummingml extract` take the same flags, generated from
`hummingml.pipeline.ExtractConfig` (and its sub-configs `models`, `pitch`, `separate`, `codec`). This file is generated
by `python docs/render_flags.py`; a test keeps it current. Boolean flags also have a `--no-` form.

"""


def render() -> str:
    """The whole document."""
    return HEADER + flags_markdown(ExtractConfig)


if __name__ == "__main__":
    (Path(__file__).parent / "extract-flags.md").write_text(render())
