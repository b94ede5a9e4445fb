"""`camlens serve`: a web page and HTTP API that explain uploaded images (needs the ``camlens[web]`` extra)."""

from .app import create_app

__all__ = ["create_app"]
