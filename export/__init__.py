"""desta_edge.export — see README (planned in a later issue)."""
