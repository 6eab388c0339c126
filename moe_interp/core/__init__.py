"""The foundation every other layer stands on; imports nothing else of the package.

Argument checks (`_checks`), the layer vocabulary (`_layers`), atomic checksummed files
(`_files`), the torch thread policy (`_threads`), content keys of weights, corpora and
interventions (`_fingerprint`), the counts every analysis reads (`_counts.RoutingCounts`),
expert sets (`_expert_set.ExpertSet`) and the languages table (`languages`, public as
`mi.languages`). Private: the package re-exports the public names.
"""
