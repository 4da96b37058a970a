"""The HTTP surface: routes, handlers, request bodies, middlewares and audio responses."""
