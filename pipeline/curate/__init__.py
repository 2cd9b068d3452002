"""Curation pieces (filters, dedup, balance, splits, captions) as pure functions over Arrow tables."""
