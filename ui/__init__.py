"""The app's presentation: HTML rendering and static CSS (app.py wires it to Gradio)."""
