"""`python -m moe_interp.datasets > docs/corpus.md` regenerates the corpus page."""

from ._udhr import _markdown

print(_markdown(), end="")
