"""The paper's analyses on `RoutingStats`: expert sets, divergences, clustering, layer profiles."""
