"""A request's text turned into audio: parsing, text, voices, cache and flights, synthesis."""
