"""Evolutionary search for fooling images: genome encodings and the search loop."""
