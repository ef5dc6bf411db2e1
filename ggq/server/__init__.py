"""`ggq serve`: an OpenAI-compatible HTTP server over a loaded model (Starlette + uvicorn).

    app = create_app(model, model_id, api_key=None)   # Starlette app; app.state.engine runs requests
    sock = bind("127.0.0.1", 8080)                     # the listening socket (a one-line error if taken)
    Server(app, sock).run()                            # or .start() / .stop() in a background thread

protocol.py: request validation and response bodies (OpenAI's wire format); engine.py: the
queue and the worker thread that owns the model; app.py: routes, API key, streaming.
"""
from .app import create_app
from .runner import Server, bind

__all__ = ["create_app", "Server", "bind"]
