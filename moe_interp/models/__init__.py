"""Models: `load` and `wrap` a Hugging Face MoE model into nnsight with its router view
(`_loading`), and the zoo of tiny models built from configs (`zoo`, public as `mi.zoo`).

Reads `core`, `arch` and `runtime`. Private: the package re-exports the public names.
"""
