"""The web app for self-hosters: `python -m latentsync.app`, then open http://127.0.0.1:7860.

`jobs` runs lip-sync jobs on the loaded models and keeps their results; `page` is the Gradio page
(and its `lipsync` API endpoint) over them; `uploads` bounds what reaches the app before our checks
(the upload route, URL inputs); `__main__` loads the models once and serves the page, with its
login and limits.
"""
