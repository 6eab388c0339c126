"""What runs where the model is: interventions compiled into a finished plan, the code
that executes it inside an nnsight trace, and the router view.

Reads `core` and `arch`; never the analyses above it (a remote request ships this layer by
value to a server that has only nnsight and torch). The trace returns counts
(`core._counts`); the face (`moe_interp.tracing`) wraps them into `RoutingStats`.
Private: the package re-exports the public names.
"""
