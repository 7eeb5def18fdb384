"""The classification labels every layer speaks of (documents carry one; search filters on them; compliance raises
them). Part of the ground layer beside the audit log: it imports nothing of the project."""

# Least to most sensitive. Every chunk carries its document's; a search can be filtered on it.
CLASSIFICATIONS = ("public", "internal", "confidential", "restricted")
