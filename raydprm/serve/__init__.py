"""Ray Serve deployment of the reward model (``app.py``) and its HTTP surface (``http.py``)."""
