"""Taxonomy: backbone loaders, name normalisation, the resolver, vernacular names, non-living classes."""
