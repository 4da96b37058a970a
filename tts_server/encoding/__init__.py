"""Audio formats and their streaming encoders."""
