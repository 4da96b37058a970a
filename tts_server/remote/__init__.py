"""Remote engines: OpenAI-shaped HTTP upstreams ([[engines.remote]]) behind a front-side pool."""
