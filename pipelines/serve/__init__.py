"""The online endpoint: settings, dynamic batcher, API models, FastAPI app, Ray Serve deployment, autoscaling.

`app_builder` is the Serve application builder (`import_path: pipelines.serve:app_builder`); it is
imported on first use, so that `import pipelines.serve.settings` stays light.
"""

__all__ = ["app_builder"]


def __getattr__(name: str):
    if name == "app_builder":
        from pipelines.serve.deployment import app_builder

        return app_builder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
