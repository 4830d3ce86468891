"""Keys, CURVE certificates and connection files."""
