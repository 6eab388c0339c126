"""`python -m moe_interp.datasets > docs/corpus.md` regenerates the corpus page."""

from moe_interp.datasets._udhr import _markdown

print(_markdown(), end="")
